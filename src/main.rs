//! The `gatehouse` binary: command line, logging, signals. Everything else is in the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use gatehouse::admin::ReloadOutcome;
use gatehouse::config::{Config, ConfigError};
use gatehouse::server::Server;
use tokio::signal::unix::{signal, SignalKind};

mod alloc;

/// mimalloc instead of glibc's malloc: a proxy allocates and frees many small, short-lived
/// buffers per request, and glibc's allocator was 40% of the instructions of a reverse-proxied
/// request (bench/count-reverse.sh). Only the binary sets it; the library leaves the choice to
/// whoever links it. `alloc` says why it is not the `mimalloc` crate's wrapper.
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

/// Exit codes, distinct so scripts can tell a bad config from a failed start.
const EXIT_CONFIG: u8 = 2;
const EXIT_START: u8 = 3;

/// Read when no `--config` is given and the file exists (the Debian package installs it).
const DEFAULT_CONFIG_PATH: &str = "/etc/gatehouse/gatehouse.toml";

/// What `--help` and the man page say about the process's interface, from one list each.
const CONFIG_NOTE: &str = "Without --config, /etc/gatehouse/gatehouse.toml is read when it exists;
otherwise the built-in safe default runs (HTTP proxy on 127.0.0.1:3128, SOCKS on
127.0.0.1:1080, loopback only; `gatehouse default-config` prints it).";
const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "reload the config file (an invalid file is reported, the running config kept)",
    ),
    ("SIGUSR1", "reopen the access log file (for logrotate)"),
    (
        "SIGTERM",
        "drain: stop accepting, let requests and tunnels finish (shutdown.drain_timeout)",
    ),
    (
        "SIGINT",
        "exit at once (so does a second SIGTERM during a drain)",
    ),
    ("SIGUSR2", "ignored"),
];
const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "clean exit (check: the file is valid)"),
    (
        "2",
        "bad config, or a start-up check failed (each problem listed with its key and line)",
    ),
    (
        "3",
        "start-up failure past those checks (address in use, ...)",
    ),
];
const ENVIRONMENT: &[(&str, &str)] = &[
    ("GATEHOUSE_LOG", "tracing filter for the operational log on stderr (default info; e.g. debug, gatehouse::connector=debug)"),
    ("NOTIFY_SOCKET", "set by systemd for Type=notify: READY=1, RELOADING=1 and STOPPING=1 are sent there"),
];

/// The end of `--help`.
fn help_footer() -> String {
    let mut out = format!("Configuration:\n  {}\n", CONFIG_NOTE.replace('\n', "\n  "));
    for (title, rows) in [
        ("Signals", SIGNALS),
        ("Exit codes", EXIT_CODES),
        ("Environment", ENVIRONMENT),
    ] {
        out.push_str(&format!("\n{title}:\n"));
        for (name, text) in rows {
            out.push_str(&format!("  {name:<14} {text}\n"));
        }
    }
    out
}

/// The man page: clap_mangen's sections from the command line, then FILES, SIGNALS, EXIT
/// STATUS and ENVIRONMENT from the lists above.
fn render_man(cmd: &clap::Command, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    let esc = |t: &str| t.replace('\\', "\\e").replace('-', "\\-");
    writeln!(
        w,
        ".SH FILES\n.TP\n{}\n{}",
        esc(DEFAULT_CONFIG_PATH),
        esc(CONFIG_NOTE)
    )?;
    for (title, rows) in [
        ("SIGNALS", SIGNALS),
        ("EXIT STATUS", EXIT_CODES),
        ("ENVIRONMENT", ENVIRONMENT),
    ] {
        writeln!(w, ".SH {title}")?;
        for (name, text) in rows {
            writeln!(w, ".TP\n\\fB{}\\fR\n{}", esc(name), esc(text))?;
        }
    }
    writeln!(
        w,
        ".SH SEE ALSO\nThe README and docs/ of the source tree; /usr/share/doc/gatehouse/."
    )?;
    man.render_version_section(w)
}

/// `gatehouse man [DIR]`: the main page to stdout, or every page (gatehouse.1 and one per
/// subcommand) into DIR.
fn man(dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        render_man(&cmd, &mut out)?;
        return out.flush();
    };
    let mut main_page = std::fs::File::create(dir.join("gatehouse.1"))?;
    render_man(&cmd, &mut main_page)?;
    for sub in cmd.get_subcommands() {
        clap_mangen::Man::new(sub.clone()).generate_to(dir)?;
    }
    Ok(())
}

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "One proxy server for every job: HTTP forward proxy and CONNECT, SOCKS, reverse proxy",
    after_help = help_footer()
)]
struct Cli {
    /// Configuration file (TOML). Default: /etc/gatehouse/gatehouse.toml when it exists,
    /// otherwise the built-in safe default on loopback.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file and report every problem in it (exit 0 valid, 2 not).
    Check {
        /// The file to check (the same as --config FILE).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print the built-in default configuration.
    DefaultConfig,
    /// Hash a password (read from standard input) into a users-file entry. With --file, the
    /// user's line in that file is added or replaced; without it, the line is printed.
    Passwd {
        /// User name.
        user: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// bcrypt (cost 12) instead of argon2id.
        #[arg(long)]
        bcrypt: bool,
        /// Users file to update.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print the man page (roff, section 1) generated from this command line; with DIR,
    /// write it and one page per subcommand there.
    Man {
        /// Directory to write gatehouse.1 and gatehouse-<command>.1 into.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Make a self-signed certificate and key for a tunnel relay (NAME.crt and NAME.key in
    /// DIR, the key 0600) and print the certificate's SHA-256 fingerprint, the form an
    /// agent's `fingerprint` takes.
    Cert {
        /// The name the certificate is for (agents check it as `server_name`).
        #[arg(long)]
        name: String,
        /// Directory to write the files into (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Run as a tunnel agent: the config (--config FILE) must have an [agent] section.
    Agent,
    /// Print a shell completion script.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
}

/// Which config file to read: the one named, else the default path when it exists, else none
/// (the built-in default).
fn choose_config(named: Option<PathBuf>, default_exists: bool) -> Option<PathBuf> {
    named.or_else(|| default_exists.then(|| PathBuf::from(DEFAULT_CONFIG_PATH)))
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match &cli.command {
        Some(Command::Man { dir }) => {
            return match man(dir.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse man: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "gatehouse",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if let Some(Command::Cert { name, out }) = &cli.command {
        return match cert(name, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse cert: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `check FILE` is `check --config FILE`.
    if let Some(Command::Check { file: Some(file) }) = &cli.command {
        if cli.config.as_ref().is_some_and(|c| c != file) {
            eprintln!("gatehouse check: give the file once (FILE or --config), not both");
            return ExitCode::from(EXIT_CONFIG);
        }
        cli.config = Some(file.clone());
    }
    cli.config = choose_config(
        cli.config.take(),
        std::path::Path::new(DEFAULT_CONFIG_PATH).exists(),
    );
    if let Some(Command::Passwd {
        user,
        groups,
        bcrypt,
        file,
    }) = &cli.command
    {
        return match passwd(user, groups, *bcrypt, file.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse passwd: {e:#}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let text = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gatehouse: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => gatehouse::config::DEFAULT_CONFIG.to_string(),
    };
    let source = cli
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<built-in default>".into());
    match cli.command {
        Some(
            Command::Passwd { .. }
            | Command::Man { .. }
            | Command::Completions { .. }
            | Command::Cert { .. },
        ) => ExitCode::SUCCESS,
        Some(Command::DefaultConfig) => {
            print!("{}", gatehouse::config::DEFAULT_CONFIG.trim_start());
            ExitCode::SUCCESS
        }
        // `check` runs every start-up check short of binding: the same function the start uses.
        Some(Command::Check { .. }) => match Config::parse(&text).and_then(|c| {
            let p = gatehouse::startup::prepare(&c)?;
            Ok((c, p))
        }) {
            Ok((c, p)) => {
                for w in &p.warnings {
                    eprintln!("gatehouse: {source}: warning: {w}");
                }
                println!("{source}: ok ({} listener(s))", c.listeners.len());
                if let Some(w) = fd_warning(&c) {
                    eprintln!("gatehouse: {source}: warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(errs) => {
                report(&source, &errs);
                ExitCode::from(EXIT_CONFIG)
            }
        },
        command @ (None | Some(Command::Agent)) => {
            let config = match Config::parse(&text) {
                Ok(c) => c,
                Err(errs) => {
                    report(&source, &errs);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if matches!(command, Some(Command::Agent)) && config.agent.is_none() {
                eprintln!("gatehouse agent: {source} has no [agent] section");
                return ExitCode::from(EXIT_CONFIG);
            }
            let prepared = match gatehouse::startup::prepare(&config) {
                Ok(p) => p,
                Err(errs) => {
                    report(&source, &errs);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // `[policy.kerberos] keytab`: the GSSAPI library reads KRB5_KTNAME. Set once,
            // before any thread starts (a reload does not change it).
            if let Some(keytab) = &config.policy.kerberos.keytab {
                std::env::set_var("KRB5_KTNAME", keytab);
            }
            init_logging();
            for w in &prepared.warnings {
                tracing::warn!("{source}: {w}");
            }
            raise_fd_limit();
            if let Some(w) = fd_warning(&config) {
                tracing::warn!("{w}");
            }
            // `[runtime] per_core`: connections run on their own worker threads
            // (`gatehouse::workers`), each of which accepts from the listeners itself; this
            // runtime keeps health checks, the admin listener and reloads. Otherwise it is
            // the shared scheduler.
            let built = if config.runtime.per_core {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if config.runtime.workers > 0 {
                    b.worker_threads(config.runtime.workers);
                }
                b.enable_all().build()
            };
            let rt = match built {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("gatehouse: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_START);
                }
            };
            match rt.block_on(run(config, prepared, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}

/// `gatehouse passwd`: on a terminal the password is asked twice without echo; otherwise it
/// is the first line of standard input. Never argv. The file is written 0600.
fn passwd(
    user: &str,
    groups: &[String],
    bcrypt: bool,
    file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use gatehouse::policy::passwd::{readable_by_others, update_file};
    use gatehouse::policy::users::{format_entry, hash_password, HashAlgorithm};
    let password = read_password(user)?;
    let alg = if bcrypt {
        HashAlgorithm::Bcrypt { cost: 12 }
    } else {
        HashAlgorithm::Argon2id
    };
    let hash = hash_password(&password, alg)?;
    let entry = format_entry(user, &hash, groups).map_err(anyhow::Error::msg)?;
    let Some(path) = file else {
        println!("{entry}");
        return Ok(());
    };
    if let Some(warning) = readable_by_others(path) {
        eprintln!("gatehouse passwd: warning: {warning}; it is rewritten 0600 now");
    }
    update_file(path, user, &entry).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{}: entry for {user} written", path.display());
    Ok(())
}

/// `gatehouse cert`: NAME.crt (0644) and NAME.key (0600) in `dir`, the fingerprint printed.
fn cert(name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let (cert, key, fp) = gatehouse::tunnel::tls::self_signed(name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));
    let _ = std::fs::remove_file(&key_path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    f.write_all(key.as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    eprintln!(
        "wrote {} and {} (self-signed for {name})",
        cert_path.display(),
        key_path.display()
    );
    println!("{}", gatehouse::tunnel::proto::format_fingerprint(&fp));
    Ok(())
}

fn read_password(user: &str) -> anyhow::Result<gatehouse::policy::Secret> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        use gatehouse::policy::passwd::prompt_without_echo;
        let first = prompt_without_echo(&format!("Password for {user}: "))
            .context("reading the password")?;
        let again = prompt_without_echo("Again: ").context("reading the password")?;
        gatehouse::policy::passwd::confirm(&first, &again).map_err(anyhow::Error::msg)?;
        return Ok(gatehouse::policy::Secret::new(first));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "empty password on stdin");
    Ok(gatehouse::policy::Secret::new(password))
}

fn report(source: &str, errs: &[ConfigError]) {
    eprintln!("gatehouse: {source}: {} problem(s):", errs.len());
    for e in errs {
        eprintln!("  {e}");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Thousands of clients need thousands of descriptors: take the hard limit.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < hard {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}

/// Whether the listeners' `max_connections` fit in the hard open-files limit (the one the
/// server raises its soft limit to).
fn fd_warning(config: &Config) -> Option<String> {
    let hard = gatehouse::fdlimit::nofile_hard()?;
    gatehouse::fdlimit::fit(config.listeners.iter().map(|l| l.max_connections), hard)
}

/// Re-reads the config file; a valid one replaces the running config, an invalid one is
/// reported and changes nothing. The outcome is for the admin API.
async fn reload(server: &mut Server, path: Option<&std::path::Path>) -> ReloadOutcome {
    let Some(path) = path else {
        tracing::warn!("reload: running on the built-in default; nothing to reload");
        return ReloadOutcome::Refused(vec![
            "running on the built-in default config; nothing to reload".into(),
        ]);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("cannot read {}: {e}", path.display());
            tracing::error!("reload: {why}; keeping the running config");
            return ReloadOutcome::Refused(vec![why]);
        }
    };
    // Every check short of binding, as `check` and the start run them, before anything changes.
    let checked = Config::parse(&text).and_then(|c| {
        gatehouse::startup::prepare(&c)?;
        Ok(c)
    });
    match checked {
        Err(errs) => {
            for e in &errs {
                tracing::error!("reload: {}: {e}", path.display());
            }
            tracing::error!(
                "reload: {} problem(s); keeping the running config",
                errs.len()
            );
            ReloadOutcome::Refused(errs.iter().map(ToString::to_string).collect())
        }
        Ok(new) => match (
            gatehouse::startup::users_file_warning(&new),
            server.reload(new).await,
        ) {
            (warning, Ok(())) => {
                tracing::info!("reload: {} applied", path.display());
                if let Some(w) = &warning {
                    tracing::warn!("{w}");
                }
                ReloadOutcome::Applied(warning.into_iter().collect())
            }
            (_, Err(e)) => {
                tracing::error!("reload: {e:#}");
                ReloadOutcome::Partial(format!("{e:#}").lines().map(str::to_string).collect())
            }
        },
    }
}

/// The next admin API request; never ready without an admin listener.
async fn next_control(
    rx: &mut Option<tokio::sync::mpsc::Receiver<gatehouse::admin::Control>>,
) -> gatehouse::admin::Control {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Tells the service manager (systemd, `Type=notify`) a state change; without
/// `NOTIFY_SOCKET` this does nothing.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// A reload (SIGHUP or the admin API) with the service manager told around it.
async fn notified_reload(server: &mut Server, path: Option<&std::path::Path>) -> ReloadOutcome {
    // systemd (>= 253) wants the monotonic time with RELOADING=1.
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
    let outcome = reload(server, path).await;
    notify(&[sd_notify::NotifyState::Ready]);
    outcome
}

async fn run(
    config: Config,
    prepared: gatehouse::startup::Prepared,
    path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // Installed before anything runs: their default action would kill the process at once.
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?;
    let mut server = Server::start_prepared(&config, prepared).await?;
    for (name, addr) in server.bound() {
        tracing::info!(listener = %name, %addr, "ready");
    }
    if let Some(addr) = server.admin {
        tracing::info!(listener = "admin", %addr, "ready");
    }
    tracing::info!("all listeners ready");
    notify(&[sd_notify::NotifyState::Ready]);

    // SIGHUP: reload. SIGUSR1: reopen the access log file (after logrotate moved it).
    // SIGUSR2: ignored. SIGTERM: graceful drain. SIGINT: exit at once. A second signal during
    // a drain: at once.
    let mut control = server.control.take();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = notified_reload(&mut server, path.as_deref()).await;
            }
            c = next_control(&mut control) => match c {
                gatehouse::admin::Control::Reload(reply) => {
                    tracing::info!("admin API: reload");
                    let _ = reply.send(notified_reload(&mut server, path.as_deref()).await);
                }
                gatehouse::admin::Control::Drain => {
                    tracing::info!("admin API: drain");
                    break;
                }
            },
            _ = usr1.recv() => {
                server.services.access_log.reopen();
                tracing::info!("SIGUSR1: reopening the access log");
            }
            _ = usr2.recv() => tracing::info!("SIGUSR2: ignored"),
            _ = term.recv() => break,
            _ = int.recv() => {
                notify(&[sd_notify::NotifyState::Stopping]);
                tracing::info!("SIGINT: exiting now");
                return Ok(());
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    // The spare descriptors kept for reloads would keep the ports open through the drain.
    server.release_listening_sockets();
    let shutdown = &server.services.shutdown;
    tracing::info!(
        in_flight = shutdown.in_flight(),
        "draining for up to {:?}",
        config.shutdown.drain_timeout
    );
    shutdown.begin();
    let deadline: Duration = config.shutdown.drain_timeout;
    tokio::select! {
        _ = shutdown.drained() => tracing::info!("drained; exiting"),
        _ = tokio::time::sleep(deadline) => tracing::warn!(in_flight = shutdown.in_flight(), "drain deadline passed; exiting"),
        _ = term.recv() => tracing::warn!("second signal; exiting now"),
        _ = int.recv() => tracing::warn!("SIGINT; exiting now"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_config_wins_then_default_path_then_built_in() {
        let named = PathBuf::from("x.toml");
        assert_eq!(
            choose_config(Some(named.clone()), true),
            Some(named.clone())
        );
        assert_eq!(choose_config(Some(named.clone()), false), Some(named));
        assert_eq!(
            choose_config(None, true),
            Some(PathBuf::from("/etc/gatehouse/gatehouse.toml"))
        );
        assert_eq!(choose_config(None, false), None);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
