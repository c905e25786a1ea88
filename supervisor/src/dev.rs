//! `tambod --dev`: an embedded development setup, created on first use:
//! ports 1025 (smtp), 1587 (submission) and 1465 (submission over TLS) on
//! 127.0.0.1, a self-signed certificate for `localhost`, one user
//! `dev@localhost` with a random password, and mail delivered as Maildir
//! files under `DIR/mail/<address>/new/`.

use std::path::{Path, PathBuf};

use rand::Rng;
use tambo_common::userdb::UserDb;

const DEV_USER: &str = "dev";
const DEV_DOMAIN: &str = "localhost";

fn write(path: &Path, content: &[u8]) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdirs(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Create the setup in `dir` if it is not there yet, print how to use it,
/// and return its configuration directory.
pub fn prepare(dir: &Path, workers_dir: &Path) -> Result<PathBuf, String> {
    mkdirs(dir)?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config_dir = dir.join("config");
    let password_file = dir.join("dev-password");
    if !config_dir.join("chasquid.conf").exists() {
        create(&dir, &config_dir, &password_file, workers_dir)?;
    }
    let password = std::fs::read_to_string(&password_file).map_err(|e| format!("{}: {e}", password_file.display()))?;
    eprintln!(
        "\n tambo development setup in {dir}\n\
         \x20 smtp         127.0.0.1:1025  (STARTTLS)\n\
         \x20 submission   127.0.0.1:1587  (STARTTLS + AUTH)\n\
         \x20 submissions  127.0.0.1:1465  (implicit TLS + AUTH)\n\
         \x20 user         {DEV_USER}@{DEV_DOMAIN}   password: {password}\n\
         \x20 mail goes to {mail}/<address>/new/\n\
         \x20 try: swaks --server 127.0.0.1:1025 --to {DEV_USER}@{DEV_DOMAIN}\n",
        dir = dir.display(),
        password = password.trim(),
        mail = dir.join("mail").display(),
    );
    Ok(config_dir)
}

fn create(dir: &Path, config_dir: &Path, password_file: &Path, workers_dir: &Path) -> Result<(), String> {
    let domain_dir = config_dir.join("domains").join(DEV_DOMAIN);
    let cert_dir = config_dir.join("certs").join(DEV_DOMAIN);
    let mail_dir = dir.join("mail");
    for d in [&domain_dir, &cert_dir, &mail_dir, &dir.join("data"), &dir.join("run")] {
        mkdirs(d)?;
    }
    let password: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    let mut db = UserDb::default();
    db.add_user(DEV_USER, &password).map_err(|e| e.to_string())?;
    db.write_atomic(&domain_dir.join("users")).map_err(|e| e.to_string())?;
    write(
        &domain_dir.join("aliases"),
        b"# user: target, target...\npostmaster: dev\n",
    )?;
    let cert = rcgen::generate_simple_self_signed(vec![DEV_DOMAIN.to_string(), "127.0.0.1".to_string()])
        .map_err(|e| format!("generating the certificate: {e}"))?;
    write(&cert_dir.join("fullchain.pem"), cert.cert.pem().as_bytes())?;
    write(&cert_dir.join("privkey.pem"), cert.key_pair.serialize_pem().as_bytes())?;
    let mda = workers_dir.join("tambo");
    let conf = format!(
        "# tambo development configuration (created by tambod --dev)\n\
         hostname: \"{DEV_DOMAIN}\"\n\
         smtp_address: \"127.0.0.1:1025\"\n\
         submission_address: \"127.0.0.1:1587\"\n\
         submission_over_tls_address: \"127.0.0.1:1465\"\n\
         data_dir: \"{data}\"\n\
         run_dir: \"{run}\"\n\
         mail_log_path: \"<stderr>\"\n\
         mail_delivery_agent_bin: \"{mda}\"\n\
         mail_delivery_agent_args: \"maildir-deliver\"\n\
         mail_delivery_agent_args: \"{mail}\"\n\
         mail_delivery_agent_args: \"%to%\"\n",
        data = dir.join("data").display(),
        run = dir.join("run").display(),
        mda = mda.display(),
        mail = mail_dir.display(),
    );
    write(&config_dir.join("chasquid.conf"), conf.as_bytes())?;
    write(password_file, format!("{password}\n").as_bytes())?;
    Ok(())
}
