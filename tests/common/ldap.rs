//! A throwaway OpenLDAP server for the tests: Debian's `slapd` (installed by `.ci/run`, not
//! the system instance) run from a temporary directory with its own `slapd.conf` and mdb
//! database, on free loopback ports (plain + StartTLS, and ldaps) with a certificate from a
//! test CA made here with rcgen. Ready when slapd says `slapd starting` on stderr and both
//! ports accept a connection; the test tree is then loaded with `ldapadd`. Killed on drop.
//!
//! The tree (`dc=test`):
//! - `uid=alice,ou=people` (password `alice-pw`), member of `cn=staff,ou=groups`
//! - `uid=bob,ou=people` (password `bob-pw`), member of `cn=admins,ou=groups`
//! - `cn=proxy,dc=test` (password `proxy-pw`): the service account for search-then-bind
//!
//! Groups are `groupOfNames`; the `memberof` overlay gives users `memberOf`. Access:
//! passwords only for binding, everything readable by bound users, nothing anonymously.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub const ADMIN_DN: &str = "cn=admin,dc=test";
pub const ADMIN_PW: &str = "admin-pw";
pub const SERVICE_DN: &str = "cn=proxy,dc=test";
pub const SERVICE_PW: &str = "proxy-pw";
pub const PEOPLE: &str = "ou=people,dc=test";
pub const GROUPS: &str = "ou=groups,dc=test";

const TREE: &str = "\
dn: dc=test
objectClass: dcObject
objectClass: organization
o: test
dc: test

dn: ou=people,dc=test
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=test
objectClass: organizationalUnit
ou: groups

dn: cn=proxy,dc=test
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: proxy
userPassword: proxy-pw

dn: uid=alice,ou=people,dc=test
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
userPassword: alice-pw

dn: uid=bob,ou=people,dc=test
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-pw

dn: cn=staff,ou=groups,dc=test
objectClass: groupOfNames
cn: staff
member: uid=alice,ou=people,dc=test

dn: cn=admins,ou=groups,dc=test
objectClass: groupOfNames
cn: admins
member: uid=bob,ou=people,dc=test
";

fn slapd_binary() -> PathBuf {
    for p in ["/usr/sbin/slapd", "/usr/local/sbin/slapd"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "slapd is not installed: the LDAP tests need Debian's slapd and ldap-utils \
         (DEBIAN_FRONTEND=noninteractive apt-get install slapd ldap-utils; .ci/run does)"
    );
}

/// Two distinct free loopback ports (both held until both are chosen).
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("bound").port();
    (port(&a), port(&b))
}

/// A running test slapd.
pub struct Slapd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `ldap://` (plain, and StartTLS).
    pub port: u16,
    /// `ldaps://`.
    pub tls_port: u16,
    /// The test CA's certificate (PEM) that signed slapd's certificate.
    pub ca_file: PathBuf,
    /// Everything slapd wrote to stderr (for failure messages).
    log: Arc<Mutex<Vec<String>>>,
}

impl Slapd {
    /// Starts slapd and loads the test tree.
    pub fn start() -> Slapd {
        slapd_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::create_dir(d.join("db")).expect("db dir");
        let ca_file = write_certs(d);
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
database mdb
suffix \"dc=test\"
rootdn \"{ADMIN_DN}\"
rootpw {ADMIN_PW}
directory {d}/db
maxsize 16777216
overlay memberof
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
",
            d = d.display()
        );
        std::fs::write(d.join("slapd.conf"), conf).expect("slapd.conf");
        let (port, tls_port) = free_ports();
        let mut s = Slapd {
            child: None,
            dir,
            port,
            tls_port,
            ca_file,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        s.run();
        s.ldapadd(TREE);
        s
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// Starts the slapd process (same config, database and ports) and waits until it says
    /// it is serving.
    fn run(&mut self) {
        let d = self.dir.path();
        let mut child = Command::new(slapd_binary())
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.port, self.tls_port
            ))
            // Stay in the foreground and print only what every level prints, which
            // includes "slapd starting" once the listeners are open.
            .args(["-d", "32768"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("slapd runs");
        let err = child.stderr.take().expect("slapd stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    l.push(line.clone());
                }
                if line.contains("slapd starting") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(Ok(()));
                    }
                }
            }
            if let Some(t) = tx {
                let _ = t.send(Err(log.lock().map(|l| l.join("\n")).unwrap_or_default()));
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("slapd exited before serving:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("slapd not serving within 20s");
            }
        }
        self.child = Some(child);
        // "slapd starting" is printed when the listening sockets are bound, but their
        // listen() runs on slapd's daemon thread a moment later: ready once both accept.
        for port in [self.port, self.tls_port] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "slapd not accepting on {port} within 10s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Stops slapd (the database stays): the directory is down until [`Slapd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts slapd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.url(), "-D", ADMIN_DN, "-w", ADMIN_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{tool} runs (apt-get install ldap-utils; .ci/run does): {e}")
            });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ldif.as_bytes())
            .expect("LDIF written");
        let out = child.wait_with_output().expect("tool finished");
        assert!(
            out.status.success(),
            "{tool} failed: {}\nslapd (ports {} and {}):\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.port,
            self.tls_port,
            self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
        );
    }

    /// Adds entries (LDIF) as the directory's admin.
    pub fn ldapadd(&self, ldif: &str) {
        self.ldap_tool("ldapadd", ldif);
    }

    /// Applies changes (LDIF with `changetype`) as the directory's admin.
    pub fn ldapmodify(&self, ldif: &str) {
        self.ldap_tool("ldapmodify", ldif);
    }

    /// Sets a user's password.
    pub fn set_password(&self, uid: &str, password: &str) {
        self.ldapmodify(&format!(
            "dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n"
        ));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and a server certificate for 127.0.0.1 and localhost signed by it; returns the
/// CA file.
fn write_certs(d: &std::path::Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gatehouse test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).expect("server cert");
    std::fs::write(d.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(d.join("server.pem"), cert.pem()).expect("server.pem");
    std::fs::write(d.join("server.key"), key.serialize_pem()).expect("server.key");
    d.join("ca.pem")
}
