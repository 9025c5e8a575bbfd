//! The live dashboard in real headless Chromium, driven over WebDriver (`chromedriver`, with
//! the `fantoccini` crate): the page loads from the admin listener with nothing from outside,
//! its numbers move when traffic flows, and a screenshot lands in `target/dashboard.png`
//! (a CI artifact).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// `chromedriver` on a free loopback port, in a process group of its own with the browser it
/// starts; on drop the whole group is ended (a failed test leaves no Chromium behind), and
/// the browser's profile directory is removed.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    use std::os::unix::process::CommandExt as _;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (Debian: apt-get install chromium chromium-driver)");
    let profile = tempfile::tempdir().expect("a profile directory");
    let driver = Driver {
        child,
        port,
        profile,
    };
    // Ready when it accepts connections (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": [
                "--headless=new",
                // Tests run as root in CI containers, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                "--disable-crash-reporter",
                format!("--user-data-dir={}", driver.profile.path().display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a headless Chromium session")
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Polls the element's text until `done` holds (bounded: 15 s); returns it.
async fn text_until(c: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = text(c, css).await;
        if done(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{css} stayed at {t:?}; page state: {}",
            text(c, "#state").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(text: &str) -> Option<u64> {
    text.replace(',', "").parse().ok()
}

fn screenshot_path() -> PathBuf {
    // target/<profile>/gatehouse -> target/
    PathBuf::from(BIN)
        .parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("dashboard.png"))
        .expect("the target directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_numbers_in_headless_chromium() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        http_listener("web", ""),
        http_listener("office", ""),
    ));
    let admin = gh.addr("admin");
    let driver = start_driver();
    let c = browser(&driver).await;
    c.goto(&format!("http://{admin}/dashboard"))
        .await
        .expect("open the dashboard");
    assert_eq!(c.title().await.expect("title"), "Gatehouse dashboard");

    // The page polls the API and fills in the numbers.
    let before = text_until(&c, "#total-requests", |t| count(t).is_some()).await;
    assert_eq!(count(&before), Some(0));
    assert_eq!(text(&c, "#state").await, "live");
    text_until(&c, "[data-listener=web] .meta", |t| {
        t.starts_with("http on ")
    })
    .await;

    // Traffic: ten requests through one listener, one refused by the proxy.
    for i in 0..10 {
        let (code, out, err) =
            curl(&["-x", &gh.proxy_url("web"), &origin.url(&format!("/{i}"))]).await;
        assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    }
    let (_, out, _) = curl(&["-x", &gh.proxy_url("office"), "-i", "http://127.0.0.1:1/"]).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 5"));

    let after = text_until(&c, "#total-requests", |t| count(t) == Some(11)).await;
    assert_eq!(count(&after), Some(11));
    assert_eq!(count(&text(&c, "#total-errors").await), Some(1));
    let web = text(&c, "[data-listener=web] .nums").await;
    assert!(web.contains("10 requests"), "{web}");
    let clients = text(&c, "#clients").await;
    assert!(clients.contains("127.0.0.1"), "{clients}");
    let destinations = text(&c, "#destinations").await;
    assert!(
        destinations.contains(&format!("127.0.0.1:{}", origin.addr.port())),
        "{destinations}"
    );
    let errors = text(&c, "#errors").await;
    assert!(errors.contains("connection_refused"), "{errors}");
    // The rate follows once a full second with traffic is behind it.
    text_until(&c, "#total-rps", |t| {
        t.parse::<f64>().is_ok_and(|r| r > 0.0)
    })
    .await;

    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_path();
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    c.close().await.expect("close the browser");
}
