//! A throwaway Kerberos realm for the tests: Debian's MIT KDC (`krb5kdc`) on a free loopback
//! port, its database, a keytab for the services and a ticket cache for `alice`, all in one
//! temporary directory, stopped on drop.
//!
//! `Realm::start` returns `Err(why)` when the KDC programs are missing (`.ci/run` installs
//! `krb5-kdc krb5-admin-server krb5-user`); tests then skip with that message.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const REALM: &str = "GATEHOUSE.TEST";
pub const ALICE_PASSWORD: &str = "alice-Pa55";
/// `carol`'s tickets live three seconds (the test realm's clock skew allowance is one).
pub const CAROL_PASSWORD: &str = "carol-Pa55";

const PROGRAMS: [&str; 4] = [
    "/usr/sbin/krb5kdc",
    "/usr/sbin/kdb5_util",
    "/usr/sbin/kadmin.local",
    "/usr/bin/kinit",
];

/// A running realm. Its KDC is killed and its files removed on drop.
pub struct Realm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    kdc: Child,
}

impl Realm {
    /// Whether the KDC programs are here.
    pub fn available() -> Result<(), String> {
        match PROGRAMS.iter().find(|p| !Path::new(p).exists()) {
            Some(p) => Err(format!(
                "{p} is missing: apt-get install krb5-kdc krb5-admin-server krb5-user (.ci/run does)"
            )),
            None => Ok(()),
        }
    }

    /// Creates the realm with `alice` (password [`ALICE_PASSWORD`]), `bob`, `carol` (tickets
    /// of three seconds, [`CAROL_PASSWORD`]) and the services
    /// `HTTP/localhost`, `rcmd/localhost` (in [`Realm::keytab`]) and `host/localhost` (not in
    /// it: a ticket the proxy cannot read), starts the KDC and waits until it serves.
    pub fn start() -> Result<Realm, String> {
        Self::available()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let port = free_port()?;
        std::fs::write(d.join("krb5.conf"), krb5_conf(port)).map_err(|e| e.to_string())?;
        std::fs::write(d.join("kdc.conf"), kdc_conf(d, port)).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(d.join("rcache")).map_err(|e| e.to_string())?;
        let env = |c: &mut Command| {
            c.env("KRB5_CONFIG", d.join("krb5.conf"))
                .env("KRB5_KDC_PROFILE", d.join("kdc.conf"))
                .env("KRB5CCNAME", format!("FILE:{}", d.join("ccache").display()))
                .env_remove("KRB5_KTNAME");
        };
        run(
            "kdb5_util",
            Command::new("/usr/sbin/kdb5_util")
                .args(["create", "-s", "-r", REALM, "-P", "master-Pa55"])
                .tap(env),
        )?;
        let keytab = d.join("services.keytab");
        for q in [
            format!("addprinc -pw {ALICE_PASSWORD} alice"),
            "addprinc -pw bob-Pa55 bob".to_string(),
            // Tickets that expire three seconds after they are issued.
            format!("addprinc -pw {CAROL_PASSWORD} -maxlife \"3 seconds\" carol"),
            "addprinc -randkey HTTP/localhost".to_string(),
            "addprinc -randkey rcmd/localhost".to_string(),
            "addprinc -randkey host/localhost".to_string(),
            format!(
                "ktadd -k {} HTTP/localhost rcmd/localhost",
                keytab.display()
            ),
        ] {
            run(
                "kadmin.local",
                Command::new("/usr/sbin/kadmin.local")
                    .args(["-r", REALM, "-q", &q])
                    .tap(env),
            )?;
        }
        // The KDC runs under a shell that kills it when our end of its stdin closes: on
        // drop, and when the test process exits without dropping (a realm kept in a static).
        let script = format!(
            "/usr/sbin/krb5kdc -n -r {REALM} -P '{}' </dev/null & k=$!; read _; kill $k; wait $k",
            d.join("kdc.pid").display()
        );
        let mut kdc = Command::new("sh")
            .args(["-c", &script])
            .tap(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("krb5kdc: {e}"))?;
        // Ready when it says so on stderr (its [logging] goes there).
        let (tx, rx) = mpsc::channel();
        let stderr = kdc.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let realm = Realm { dir, port, kdc };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("commencing operation") => break,
                Ok(_) => {}
                Err(_) => return Err("krb5kdc did not start".into()),
            }
        }
        // Drain the rest so the KDC never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        realm.kinit("alice", ALICE_PASSWORD, &realm.ccache())?;
        Ok(realm)
    }

    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// `HTTP/localhost` and `rcmd/localhost`.
    pub fn keytab(&self) -> PathBuf {
        self.dir.path().join("services.keytab")
    }

    /// alice's ticket cache.
    pub fn ccache(&self) -> String {
        format!("FILE:{}", self.dir.path().join("ccache").display())
    }

    /// A directory for the proxy's replay cache (`KRB5RCACHEDIR`).
    pub fn rcache_dir(&self) -> PathBuf {
        self.dir.path().join("rcache")
    }

    /// The environment a client or the proxy runs with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KRB5_CONFIG", self.krb5_conf().display().to_string()),
            ("KRB5_KTNAME", format!("FILE:{}", self.keytab().display())),
            ("KRB5RCACHEDIR", self.rcache_dir().display().to_string()),
            ("KRB5CCNAME", self.ccache()),
        ]
    }

    /// `kinit principal` with its password on stdin, into `ccache`.
    pub fn kinit(&self, principal: &str, password: &str, ccache: &str) -> Result<(), String> {
        let mut child = Command::new("/usr/bin/kinit")
            .arg(principal)
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5CCNAME", ccache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("kinit: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{password}");
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kinit {principal}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        drop(self.kdc.stdin.take());
        let _ = self.kdc.wait();
    }
}

trait Tap {
    fn tap(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self;
}

impl Tap for Command {
    fn tap(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self {
        f(self);
        self
    }
}

fn run(what: &str, c: &mut Command) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A port free on 127.0.0.1 for both TCP and UDP (the KDC serves both).
fn free_port() -> Result<u16, String> {
    for _ in 0..20 {
        let t = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = t.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

fn krb5_conf(port: u16) -> String {
    format!(
        "[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    forwardable = false
    ticket_lifetime = 1h
    clockskew = 1

[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{port}
    }}

[domain_realm]
    localhost = {REALM}
"
    )
}

fn kdc_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {REALM} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        max_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = STDERR
    default = STDERR
"
    )
}
