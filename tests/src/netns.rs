//! A network namespace joined to the host by a veth pair, for tests that
//! need several hosts with their own addresses on one machine (root
//! only). The namespace, and with it the pair, goes on drop.

use std::process::Command;

/// A network namespace with one address of its own and one on the host.
pub struct NetNs {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The host's end of the veth pair.
    pub host_ip: String,
    /// The namespace's end: where its servers listen.
    pub ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Create namespace number `index` (1..=50) of this test process: the
    /// pair gets 10.(100+index).X.1 on the host and .2 inside, X from our
    /// pid, so that two test processes never share a subnet.
    pub fn create(index: u8) -> NetNs {
        assert!((1..=50).contains(&index), "namespace index {index}");
        let pid = std::process::id();
        let name = format!("tambo-test-{pid}-{index}");
        let (host_if, ns_if) = (format!("tb{pid}h{index}"), format!("tb{pid}n{index}"));
        let net = format!("10.{}.{}", 100 + u32::from(index), pid % 250);
        let ns = NetNs {
            name: name.clone(),
            host_ip: format!("{net}.1"),
            ip: format!("{net}.2"),
        };
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{}/24", ns.ip), "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
