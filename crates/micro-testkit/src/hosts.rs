//! Simulated hosts for multi-host tests: network namespaces, each with its
//! own address, joined by a bridge that lives in a namespace of its own.
//! Nothing is routed out: the addresses are from 198.18.0.0/24 (RFC 2544's
//! benchmarking range, never used on real networks), and no namespace has
//! a route to anything else. Needs root and `ip` (iproute2); everything is
//! deleted on drop, however the test ends.

use crate::Error;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), Error> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !o.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()).into());
    }
    Ok(())
}

/// One simulated host.
pub struct Host {
    ns: String,
    ip: String,
    /// The switch's end of the host's cable.
    port: String,
    switch: String,
}

impl Host {
    /// The host's address, e.g. `198.18.0.3`.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The host's network namespace, as `ip netns` keeps it.
    pub fn netns_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.ns)
    }

    /// A command that runs `program` on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Unplugs (`false`) or plugs back (`true`) the host's cable: while
    /// unplugged, nothing reaches it or leaves it.
    pub fn link(&self, up: bool) -> Result<(), Error> {
        ip(&["netns", "exec", &self.switch, "ip", "link", "set", &self.port, if up { "up" } else { "down" }])
    }
}

/// Hosts on one switch.
pub struct Hosts {
    switch: String,
    hosts: Vec<Host>,
}

impl Hosts {
    /// `n` hosts (at most 200), `198.18.0.1` … `198.18.0.n`, on one bridge.
    pub fn create(n: usize) -> Result<Hosts, Error> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        if n == 0 || n > 200 {
            return Err(format!("{n} hosts: between 1 and 200").into());
        }
        // Interface names are at most 15 bytes: keep the tag short.
        let tag = format!("m{}{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{tag}-sw");
        ip(&["netns", "add", &switch])?;
        let mut hosts = Hosts { switch: switch.clone(), hosts: Vec::new() };
        ip(&["netns", "exec", &switch, "ip", "link", "add", "br0", "type", "bridge"])?;
        ip(&["netns", "exec", &switch, "ip", "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{tag}-h{i}");
            let (port, nic) = (format!("{tag}p{i}"), format!("{tag}n{i}"));
            ip(&["netns", "add", &ns])?;
            let host = Host { ns: ns.clone(), ip: format!("198.18.0.{i}"), port: port.clone(), switch: switch.clone() };
            hosts.hosts.push(host);
            ip(&["link", "add", &port, "type", "veth", "peer", "name", &nic])?;
            ip(&["link", "set", &port, "netns", &switch])?;
            ip(&["link", "set", &nic, "netns", &ns])?;
            ip(&["netns", "exec", &switch, "ip", "link", "set", &port, "master", "br0"])?;
            ip(&["netns", "exec", &switch, "ip", "link", "set", &port, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("198.18.0.{i}/24"), "dev", &nic])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &nic, "up"])?;
        }
        Ok(hosts)
    }

    /// Host `i`, from 1.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the interfaces in it (and so both
        // ends of each cable).
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
