//! Test hosts in network namespaces we create (Linux, root): each node gets its own namespace
//! and address on a private bridge, and links between nodes are cut for real with blackhole
//! routes. The bridge lives in a namespace of its own, so the host's firewall (Docker sets
//! FORWARD to DROP) never sees the traffic. Everything is removed on drop.

use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct NetNs {
    tag: String,
    /// Third octet of 10.213.X.0/24.
    net: u8,
    pub nodes: usize,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Creates `nodes` namespaces on one bridge. Fails (never skips) without root or iproute2.
    pub fn create(nodes: usize) -> Result<NetNs> {
        let pid = std::process::id();
        let net = NetNs {
            tag: format!("{}", pid % 100_000),
            net: (pid % 200 + 20) as u8,
            nodes,
        };
        net.setup()
            .with_context(|| "creating test network namespaces (needs root and iproute2)")?;
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("cdsw{}", self.tag)
    }

    pub fn ns(&self, k: usize) -> String {
        format!("cdn{}-{k}", self.tag)
    }

    /// Address of node `k` (1-based).
    pub fn addr(&self, k: usize) -> String {
        format!("10.213.{}.{k}", self.net)
    }

    fn setup(&self) -> Result<()> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // The host's own leg, so the test process reaches every node.
        let host = format!("cdh{}", self.tag);
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "uplink", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", self.net),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        for k in 1..=self.nodes {
            let ns = self.ns(k);
            ip(&["netns", "add", &ns])?;
            let port = format!("p{k}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(k)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The command prefix that runs a program inside node `k`'s namespace.
    pub fn wrapper(&self, k: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(k)]
    }

    /// Drops every packet between nodes `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.ns(a),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(b)),
        ])?;
        ip(&[
            "-n",
            &self.ns(b),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(a)),
        ])
    }

    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.ns(a),
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.addr(b)),
        ])?;
        ip(&[
            "-n",
            &self.ns(b),
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.addr(a)),
        ])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for k in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.ns(k)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &format!("cdh{}", self.tag)]);
    }
}
