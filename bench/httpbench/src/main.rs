//! `httpbench`: the load tools `bench/http.sh` needs beside wrk.
//!
//! ```text
//! httpbench free-ports N
//! httpbench sink --listen 127.0.0.1:0
//! httpbench connect-throughput (--proxy ADDR | --direct) --target ADDR --bytes N
//! httpbench idle-clients --proxy ADDR --url URL --count N --hold SECS [--parallel P] [--connect-only]
//! ```
//!
//! Every tool talks to the addresses it is given and to nothing else; every loop is bounded by
//! a byte or connection count and by a timeout.

mod args;
mod idle;
mod response;
mod sink;
mod throughput;

use std::process::ExitCode;

use args::Args;

const USAGE: &str = "usage:
  httpbench free-ports N
  httpbench sink --listen ADDR
  httpbench connect-throughput (--proxy ADDR | --direct) --target ADDR --bytes N
  httpbench idle-clients --proxy ADDR --url URL --count N --hold SECS [--parallel P] [--connect-only]";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("httpbench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Thousands of idle clients need thousands of descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("httpbench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cmd.as_str() {
            "free-ports" => free_ports(&args),
            "sink" => sink::run(&args).await,
            "connect-throughput" => throughput::run(&args).await,
            "idle-clients" => idle::run(&args).await,
            other => Err(format!("unknown command {other:?}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("httpbench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints N distinct free loopback ports, one a line (all bound at once, then released).
fn free_ports(args: &Args) -> Result<(), String> {
    let n: usize = args.positional(0)?;
    if n > 100 {
        return Err("at most 100 ports".into());
    }
    let socks = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &socks {
        println!("{}", s.local_addr().map_err(|e| e.to_string())?.port());
    }
    Ok(())
}
