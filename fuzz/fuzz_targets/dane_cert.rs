//! DANE (remote servers' certificates are untrusted): the DER walk that
//! finds a certificate's SubjectPublicKeyInfo, TLSA matching, and the
//! whole chain check. The SPKI found is a DER SEQUENCE inside the
//! certificate, agrees with rustls-webpki's whenever webpki accepts the
//! certificate, and records made from the certificate match it.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ring::digest;
use rustls::pki_types::{CertificateDer, UnixTime};
use tambo_deliverd::remote::dane::{DaneCheck, Tlsa, USAGE_DANE_EE, USAGE_DANE_TA, spki_of, usable};

fn tlsa(usage: u8, selector: u8, mtype: u8, selected: &[u8]) -> Tlsa {
    let data = match mtype {
        1 => digest::digest(&digest::SHA256, selected).as_ref().to_vec(),
        2 => digest::digest(&digest::SHA512, selected).as_ref().to_vec(),
        _ => selected.to_vec(),
    };
    Tlsa {
        usage,
        selector,
        mtype,
        data,
    }
}

fuzz_target!(|cert: &[u8]| {
    let spki = spki_of(cert);
    if let Some(s) = spki {
        // A sub-slice of the certificate, starting with a SEQUENCE tag.
        let (start, end) = (cert.as_ptr() as usize, cert.as_ptr() as usize + cert.len());
        assert!(s.as_ptr() as usize >= start && s.as_ptr() as usize + s.len() <= end);
        assert_eq!(s.first(), Some(&0x30));
    }
    let der = CertificateDer::from(cert);
    if let Ok(anchor) = webpki::anchor_from_trusted_cert(&der) {
        let s = spki.expect("webpki parsed the certificate; so must spki_of");
        assert!(s.ends_with(anchor.subject_public_key_info.as_ref()));
    }
    // Records made from the certificate match it; others do not.
    for mtype in 0..=2 {
        assert!(tlsa(USAGE_DANE_EE, 0, mtype, cert).matches(cert));
        if let Some(s) = spki {
            assert!(tlsa(USAGE_DANE_EE, 1, mtype, s).matches(cert));
        }
        let mut wrong = tlsa(USAGE_DANE_EE, 0, mtype, cert);
        match wrong.data.first_mut() {
            Some(b) => *b ^= 1,
            None => wrong.data.push(0),
        }
        assert!(!wrong.matches(cert));
    }
    let records: Vec<Tlsa> = (0..4u8)
        .flat_map(|u| (0..=2u8).map(move |m| (u, m)))
        .map(|(u, m)| tlsa(u, (m + u) % 3, m, spki.unwrap_or(cert)))
        .collect();
    let kept = usable(&records);
    assert!(kept.iter().all(|r| r.is_usable() && records.contains(r)));

    // The chain check: DANE-EE by SPKI digest, then DANE-TA (the
    // certificate as its own trust anchor, so webpki parses it as both).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = UnixTime::since_unix_epoch(Duration::from_secs(1_750_000_000));
    if let Some(s) = spki {
        let ee = DaneCheck {
            records: vec![tlsa(USAGE_DANE_EE, 1, 1, s)],
            names: vec!["mx.example.com".into()],
        };
        assert!(ee.verify(&der, &[], &provider, now).is_ok());
    }
    let ta = DaneCheck {
        records: vec![tlsa(USAGE_DANE_TA, 0, 1, cert)],
        names: vec!["mx.example.com".into(), "example.com".into(), "bad name".into()],
    };
    let _ = ta.verify(&der, std::slice::from_ref(&der), &provider, now);
});
