//! Rule evaluation with 10,000 host rules: 5,000 exact names, 4,900 `*.suffix` patterns and
//! 100 regexes, plus a few rules without a host condition (ports, clients, addresses).
//!
//! Run: `cargo bench --bench policy`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::connector::Host;
use gatehouse::policy::{AccessRequest, Policy, PolicyConfig, Precheck, Protocol};

fn config() -> String {
    let mut t = String::from("[policy]\ndefault = \"allow\"\n");
    t.push_str("[[policy.rules]]\nname = \"mail\"\naction = \"deny\"\nports = [25, \"465-587\"]\n");
    for i in 0..10_000 {
        let host = match i {
            i if i < 5_000 => format!("host{i}.example{}.com", i % 97),
            i if i < 9_900 => format!("*.zone{i}.example.net"),
            i => format!("re:^ads{i}\\\\."),
        };
        let action = if i % 2 == 0 { "deny" } else { "allow" };
        t.push_str(&format!(
            "[[policy.rules]]\nname = \"r{i}\"\naction = \"{action}\"\nhosts = [\"{host}\"]\n"
        ));
    }
    t.push_str("[[policy.rules]]\nname = \"lan\"\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\ndest_addrs = [\"10.0.0.0/8\"]\n");
    t
}

fn bench(c: &mut Criterion) {
    let text = config();
    let cfg = PolicyConfig::from_toml(&text, &["http"]).expect("config");
    let policy = Policy::compile_with_users(&cfg, vec![], None).expect("policy");
    let run = |name: &str, ip: &str| {
        let host = Host::Name(name.to_string());
        let ip: IpAddr = ip.parse().expect("ip");
        let req = AccessRequest {
            listener: "http",
            client: "10.1.2.3".parse().expect("ip"),
            user: None,
            dest_host: Some(&host),
            dest_port: 443,
            protocol: Protocol::Connect,
            method: Some("CONNECT"),
            at: SystemTime::now(),
        };
        match policy.precheck(&req) {
            Precheck::Decided(v) => v,
            Precheck::Resolve => policy.decide(&req, &[ip]),
        }
    };
    let mut g = c.benchmark_group("policy_10k_host_rules");
    g.bench_function("exact_hit_last_exact_rule", |b| {
        b.iter(|| run(black_box("host4999.example52.com"), "93.184.216.34"))
    });
    g.bench_function("suffix_hit_deep_name", |b| {
        b.iter(|| run(black_box("a.b.c.www.zone9000.example.net"), "93.184.216.34"))
    });
    g.bench_function("regex_hit", |b| {
        b.iter(|| run(black_box("ads9950.example.org"), "93.184.216.34"))
    });
    g.bench_function("miss_then_resolved_allow", |b| {
        b.iter(|| run(black_box("www.unlisted.example.org"), "93.184.216.34"))
    });
    g.bench_function("miss_guard_refuses_loopback", |b| {
        b.iter(|| run(black_box("www.unlisted.example.org"), "127.0.0.1"))
    });
    g.finish();
    c.bench_function("compile_10k_rules", |b| {
        b.iter(|| Policy::compile_with_users(&cfg, vec![], None).expect("policy"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
