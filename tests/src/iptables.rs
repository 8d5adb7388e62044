//! iptables rules inside a test namespace, removed on drop.
//!
//! The rules live in the namespace's own netfilter tables, so they never
//! affect the host; deleting the namespace clears them as well.

use anyhow::Result;

use crate::netns::Netns;
use crate::util::require_bin;

/// One `iptables` rule in a namespace (filter table), deleted on drop.
#[derive(Debug)]
pub struct IptablesRule {
    netns: Netns,
    chain: String,
    spec: Vec<String>,
}

impl IptablesRule {
    /// `iptables -A <chain> <spec...>` inside `netns`.
    pub fn append(netns: &Netns, chain: &str, spec: &[&str]) -> Result<IptablesRule> {
        require_bin("iptables");
        let mut args = vec!["iptables", "-w", "5", "-A", chain];
        args.extend_from_slice(spec);
        netns.exec(&args)?;
        Ok(IptablesRule {
            netns: netns.clone(),
            chain: chain.to_string(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Drop every outgoing packet with FIN set from local TCP port `port`
    /// (`-A OUTPUT -p tcp --sport P --tcp-flags FIN FIN -j DROP`): the
    /// server's close never reaches its peer, which keeps using the
    /// connection (the keep-alive race of seed 001).
    pub fn drop_outgoing_fin(netns: &Netns, sport: u16) -> Result<IptablesRule> {
        let p = sport.to_string();
        Self::append(
            netns,
            "OUTPUT",
            &[
                "-p",
                "tcp",
                "--sport",
                &p,
                "--tcp-flags",
                "FIN",
                "FIN",
                "-j",
                "DROP",
            ],
        )
    }

    /// Drop incoming SYNs to local TCP port `port` (`-A INPUT -p tcp --dport
    /// P --syn -j DROP`): connects to it time out (blackholed host).
    pub fn drop_incoming_syn(netns: &Netns, dport: u16) -> Result<IptablesRule> {
        let p = dport.to_string();
        Self::append(
            netns,
            "INPUT",
            &["-p", "tcp", "--dport", &p, "--syn", "-j", "DROP"],
        )
    }

    /// Packet counter of this rule (`iptables -L <chain> -v -x -n`, matched by
    /// position of the first rule with the same target and port text).
    pub fn packets(&self) -> Result<u64> {
        let out = self
            .netns
            .exec(&["iptables", "-w", "5", "-L", &self.chain, "-v", "-x", "-n"])?;
        let port = self
            .spec
            .iter()
            .skip_while(|s| *s != "--sport" && *s != "--dport")
            .nth(1)
            .cloned()
            .unwrap_or_default();
        let needle = if self.spec.iter().any(|s| s == "--sport") {
            format!("spt:{port}")
        } else {
            format!("dpt:{port}")
        };
        Ok(out
            .lines()
            .find(|l| l.contains(&needle) && l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        let mut args = vec!["iptables", "-w", "5", "-D", &self.chain];
        args.extend(self.spec.iter().map(String::as_str));
        if let Err(e) = self.netns.exec(&args) {
            eprintln!("warning: removing iptables rule: {e}");
        }
    }
}
