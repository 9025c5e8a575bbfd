//! What the tunnel tests share: `gatehouse cert` output, a relay's tunnel listener and an
//! agent's config.

// Each test file uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::common::BIN;

pub const TOKEN: &str = "office-test-token";

/// `gatehouse cert` output: the files and the printed fingerprint.
pub struct Certs {
    dir: tempfile::TempDir,
    pub fingerprint: String,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(BIN)
            .args(["cert", "--name", "relay.test", "--out"])
            .arg(dir.path().join("tunnel"))
            .output()
            .expect("run gatehouse cert");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Certs { dir, fingerprint }
    }

    pub fn crt(&self) -> PathBuf {
        self.dir.path().join("tunnel/relay.test.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tunnel/relay.test.key")
    }
}

/// A tunnel listener "agents" accepting "office" (a pool when `pool`) and "home", with
/// quick heartbeats.
pub fn tunnel_listener(certs: &Certs, pool: bool) -> String {
    format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:0"
tls = {{ cert = "{crt}", key = "{key}" }}
heartbeat = "1s"
dead_after = "3s"
[[listeners.agents]]
name = "office"
token = "{TOKEN}"
pool = {pool}
[[listeners.agents]]
name = "home"
token = "{TOKEN}"
"#,
        crt = certs.crt().display(),
        key = certs.key().display(),
    )
}

/// The `[agent]` section of an agent `name` dialling `relays`, verifying the relay against
/// the certificate, allowing `allow` and publishing `web` as "web".
pub fn agent_section(
    certs: &Certs,
    name: &str,
    relays: &[SocketAddr],
    allow: &str,
    web: SocketAddr,
) -> String {
    let relays: Vec<String> = relays.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"
[agent]
name = "{name}"
token = "{TOKEN}"
relays = [{relays}]
server_name = "relay.test"
ca = "{ca}"
allow = [{allow}]
heartbeat = "1s"
dead_after = "3s"
reconnect_min = "50ms"
reconnect_max = "500ms"
connect_timeout = "3s"

[agent.publish]
web = "{web}"
"#,
        relays = relays.join(", "),
        ca = certs.crt().display(),
    )
}

/// [`agent_section`] as a whole config: names resolve only through `[dns.hosts]`.
pub fn agent_config(
    certs: &Certs,
    name: &str,
    relays: &[SocketAddr],
    allow: &str,
    web: SocketAddr,
) -> String {
    format!("{}{NO_DNS}", agent_section(certs, name, relays, allow, web))
}

/// Never the system resolver: names not listed fail against a loopback port nobody serves.
pub const NO_DNS: &str = r#"
[dns]
servers = ["127.0.0.1:9"]
timeout = "1s"
attempts = 1
[dns.hosts]
"inside.test" = "127.0.0.1"
"#;

/// A loopback address nobody listens on (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}
