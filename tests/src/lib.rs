//! Privileged end-to-end test support for the 502 tracer.
//!
//! Everything here builds real topologies out of network namespaces and veth
//! pairs, runs real proxies (nginx, HAProxy) and Node.js backends inside them,
//! and cleans up after itself on drop, also when a test panics:
//!
//! - [`Netns`], [`Link`]: namespaces (deleted on drop) and veth pairs between them.
//! - [`Proc`]: a child process in its own process group, killed with SIGKILL
//!   and reaped on drop; stdout/stderr go to files for diagnostics.
//! - [`Backend`], [`Nginx`], [`Haproxy`], [`Client`]: the actors.
//! - [`Tracer`]: the binary under test, its NDJSON output collected on a thread.
//! - [`IptablesRule`]: a rule inside a namespace, removed on drop.
//! - [`scenarios`]: client → proxy → backend set-ups that produce real 502/504s.
//!
//! Tests need root and the binaries nginx, haproxy, node, ip, iptables; when
//! something is missing they panic with a message saying what to install.
//! Nothing is ever skipped silently.
//!
//! Network rule: traffic only goes to loopback or to addresses inside the
//! namespaces these helpers created (10.231.N.0/24 on veth pairs).

pub mod backend;
pub mod client;
pub mod haproxy;
pub mod iptables;
pub mod netns;
pub mod nginx;
pub mod node;
pub mod proc;
pub mod scenarios;
pub mod tracer;
pub mod util;

pub use backend::{Backend, BackendOpts};
pub use client::{Client, ClientResult, ClientRun, Plan, Step};
pub use haproxy::{Haproxy, HaproxyConfig, HaproxyLogEntry};
pub use iptables::IptablesRule;
pub use netns::{Link, Netns, Side};
pub use nginx::{AccessEntry, Nginx, NginxConfig, Upstream, UpstreamServer};
pub use proc::{connect_in_netns, wait_port, Proc};
pub use tracer::{tracer_bin, Tracer};
pub use util::{fixture, require_bin, require_root, workspace_root, TempDir};
