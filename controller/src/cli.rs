//! The command line: `canaryctl serve` and the client commands that talk to it.

use crate::serve::{serve, ServeOptions};
use crate::units::Dur;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  canaryctl serve                                   # control plane on 127.0.0.1:7070
  canaryctl policy add envoy/policies/v2.4.0.yaml   # register an immutable policy
  canaryctl rollout start envoy/plans/support-agent.yaml
  canaryctl rollout watch                           # live line per stage
  canaryctl rollout pause --reason 'looking at tickets'
  canaryctl rollout promote --to-end
  canaryctl rollout rollback --reason 'refund flow broke'
  canaryctl rollout audit

Exit codes: 0 success; 1 the controller refused the request (bad input, conflict,
not found, unauthorised); 2 wrong usage; 3 the controller could not be reached;
4 `rollout watch` saw the rollout end without the canary promoted.";

#[derive(Parser, Debug)]
#[command(name = "canaryctl", version, about = "Canary rollouts of AI-agent policies: control plane and client", after_help = EXAMPLES)]
pub struct Cli {
    /// The controller's URL.
    #[arg(
        long,
        env = "CANARYCTL_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// API token (default: the `token` file in the state directory).
    #[arg(long, env = "CANARYCTL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, env = "CANARYCTL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// State directory (SQLite database, generated token).
    #[arg(long, env = "CANARYCTL_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is acting, for the audit log (default: $USER).
    #[arg(long, env = "CANARYCTL_ACTOR", global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane.
    #[command(
        after_help = "Example:\n  canaryctl serve --listen 127.0.0.1:7070 --webhook https://hooks.example/canary"
    )]
    Serve(ServeArgs),
    /// The policy registry.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Rollouts: start, watch and steer them.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Targets and their current route tables.
    #[command(after_help = "Example:\n  canaryctl targets --json")]
    Targets,
    /// Run a demo agent backend that applies the policy named in x-agent-policy.
    #[command(
        after_help = "Example:\n  canaryctl agent --listen 127.0.0.1:8081 --registry http://127.0.0.1:7070\n\nBehaviour per policy and request class comes from the bundle's metadata.demo;\nsend x-request-class to pick a class and x-stream: 1 for telemetry in trailers."
    )]
    Agent(AgentArgs),
    /// Send steady traffic from sticky sessions through Envoy (demo and load).
    #[command(
        after_help = "Examples:\n  canaryctl traffic                                   # 300 req/s from 3000 sessions until Ctrl-C\n  canaryctl traffic --rate 50 --duration 30s --mix refund=0.2,order=0.8\n  canaryctl traffic --requests 1000 --report-every 0s\n\nEach session keeps one request class (x-request-class) for the whole run."
    )]
    Traffic(TrafficArgs),
}

#[derive(Args, Debug)]
pub struct TrafficArgs {
    /// Where to send the requests (Envoy's listener).
    #[arg(long, default_value = "http://127.0.0.1:10000/chat")]
    pub url: String,
    /// Number of distinct sessions (x-session-id: user-0 .. user-N-1).
    #[arg(long, default_value_t = 3000)]
    pub sessions: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Request classes and their shares.
    #[arg(long, default_value = "refund=0.25,order=0.45,delivery=0.3")]
    pub mix: String,
    /// Share of requests that ask for a streamed answer (x-stream: 1).
    #[arg(long, default_value_t = 0.1)]
    pub stream_share: f64,
    /// Seed of the session, class and stream choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_dur)]
    pub duration: Option<Dur>,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Print a tally this often (0s: only at the end).
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub report_every: Dur,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The controller whose registry holds the policy bundles.
    #[arg(
        long,
        env = "CANARYCTL_REGISTRY",
        default_value = "http://127.0.0.1:7070"
    )]
    pub registry: String,
    /// Seed of the simulated outcomes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiplies the simulated latency (0 answers at once).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, env = "CANARYCTL_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Webhook URL for state changes (repeatable).
    #[arg(long = "webhook", env = "CANARYCTL_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Envoy admin URL (repeatable), e.g. http://127.0.0.1:9901.
    #[arg(
        long = "envoy-admin",
        env = "CANARYCTL_ENVOY_ADMINS",
        value_delimiter = ','
    )]
    pub envoy_admins: Vec<String>,
    /// Drive Envoy runtime weights (runtime mode) on every --envoy-admin.
    #[arg(long)]
    pub runtime_weights: bool,
    /// How often the control loop runs.
    #[arg(long, default_value = "100ms", value_parser = parse_dur)]
    pub tick: Dur,
    /// How often every --envoy-admin's stats are read for the analysis.
    #[arg(long, default_value = "1s", value_parser = parse_dur)]
    pub scrape_interval: Dur,
}

fn parse_dur(text: &str) -> Result<Dur, String> {
    Dur::parse(text)
}

#[derive(Subcommand, Debug)]
#[command(
    after_help = "Examples:\n  canaryctl policy add envoy/policies/v2.4.0.yaml\n  canaryctl policy list\n  canaryctl policy show v2.4.0"
)]
pub enum PolicyCommand {
    /// Register a policy bundle (YAML or JSON); the same version with other content is refused.
    #[command(after_help = "Example:\n  canaryctl policy add v2.4.0.yaml")]
    Add { file: PathBuf },
    /// List registered policies.
    #[command(after_help = "Example:\n  canaryctl policy list\n  canaryctl policy list --json")]
    List,
    /// Show one policy bundle.
    #[command(after_help = "Example:\n  canaryctl policy show v2.4.1")]
    Show { version: String },
}

#[derive(Subcommand, Debug)]
#[command(
    after_help = "Examples:\n  canaryctl rollout start envoy/plans/support-agent.yaml\n  canaryctl rollout status --watch\n  canaryctl rollout pause --reason 'checking tickets'\n  canaryctl rollout promote --to-end\n  canaryctl rollout rollback --reason 'refunds broke'\n  canaryctl rollout audit --json"
)]
pub enum RolloutCommand {
    /// Start a rollout from a plan (YAML or JSON).
    #[command(after_help = "Example:\n  canaryctl rollout start plan.yaml")]
    Start { plan: PathBuf },
    /// Show a rollout (default: the active one).
    #[command(
        after_help = "Example:\n  canaryctl rollout status\n  canaryctl rollout status 7 --json\n  canaryctl rollout status --target support-agent --watch"
    )]
    Status {
        id: Option<i64>,
        #[arg(long)]
        target: Option<String>,
        /// Keep showing it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Follow a rollout live: one line per stage with a progress bar while it waits;
    /// exits 0 when the canary is promoted, 4 when it is rolled back or aborted.
    #[command(
        after_help = "Examples:\n  canaryctl rollout watch\n  canaryctl rollout watch 7 --json   # one JSON object per change\n  canaryctl rollout watch && ./deploy-next.sh"
    )]
    Watch {
        id: Option<i64>,
        #[arg(long)]
        target: Option<String>,
    },
    /// List every rollout.
    #[command(after_help = "Example:\n  canaryctl rollout list --json")]
    List,
    /// Hold the current stage.
    #[command(
        after_help = "Example:\n  canaryctl rollout pause --reason 'checking tickets'\n  canaryctl rollout pause 7"
    )]
    Pause(ActArgs),
    /// Continue a paused rollout.
    #[command(
        after_help = "Example:\n  canaryctl rollout resume --reason 'tickets were unrelated'"
    )]
    Resume(ActArgs),
    /// Move to the next stage, or with --to-end make the canary the stable policy.
    #[command(
        after_help = "Example:\n  canaryctl rollout promote\n  canaryctl rollout promote --to-end --reason 'urgent fix'"
    )]
    Promote {
        #[command(flatten)]
        act: ActArgs,
        #[arg(long)]
        to_end: bool,
    },
    /// Send all traffic back to the stable policy.
    #[command(after_help = "Example:\n  canaryctl rollout rollback --reason 'refund flow broke'")]
    Rollback(ActArgs),
    /// Cancel the rollout (all traffic to stable).
    #[command(after_help = "Example:\n  canaryctl rollout abort --reason 'wrong plan'")]
    Abort(ActArgs),
    /// The audit log (default: the active rollout's, or everything with --all).
    #[command(
        after_help = "Example:\n  canaryctl rollout audit\n  canaryctl rollout audit --all --json"
    )]
    Audit {
        id: Option<i64>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct ActArgs {
    /// Rollout id (default: the active rollout).
    pub id: Option<i64>,
    /// Pick the active rollout of this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// A failed command and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("policy-canary");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/policy-canary");
    }
    PathBuf::from(".canaryctl")
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    if let Command::Serve(args) = &cli.command {
        return serve(ServeOptions {
            listen: args.listen,
            state_dir,
            token: cli.token.clone(),
            token_file: cli.token_file.clone(),
            webhooks: args.webhooks.clone(),
            envoy_admins: args.envoy_admins.clone(),
            runtime_weights: args.runtime_weights,
            tick: args.tick.0.max(Duration::from_millis(10)),
            scrape_interval: args.scrape_interval.0.max(Duration::from_millis(50)),
        })
        .await
        .map_err(|e| fail(1, format!("{e:#}")));
    }
    if let Command::Agent(args) = &cli.command {
        return run_agent(args).await;
    }
    if let Command::Traffic(args) = &cli.command {
        return run_traffic(args, cli.json).await;
    }
    let token = cli.token.clone().or_else(|| {
        let file = cli
            .token_file
            .clone()
            .unwrap_or_else(|| state_dir.join("token"));
        std::fs::read_to_string(file)
            .ok()
            .map(|t| t.trim().to_string())
    });
    let actor = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| fail(1, e.to_string()))?,
        base: cli.server.trim_end_matches('/').to_string(),
        token,
        actor,
    };
    let json = cli.json;
    match cli.command {
        Command::Serve(_) | Command::Agent(_) | Command::Traffic(_) => Ok(()),
        Command::Targets => {
            let v = client.get("/v1/targets").await?;
            print_or(json, &v, || print_targets(&v));
            Ok(())
        }
        Command::Policy(PolicyCommand::Add { file }) => {
            let text = read_file(&file)?;
            let v = client.post("/v1/policies", text).await?;
            print_or(json, &v, || {
                println!("registered {}", v["id"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        Command::Policy(PolicyCommand::List) => {
            let v = client.get("/v1/policies").await?;
            print_or(json, &v, || {
                for p in v["policies"].as_array().into_iter().flatten() {
                    println!(
                        "{:<16} sha256:{}  {}",
                        s(&p["version"]),
                        s(&p["sha256"]),
                        s(&p["bundle"]["model"])
                    );
                }
            });
            Ok(())
        }
        Command::Policy(PolicyCommand::Show { version }) => {
            let v = client.get(&format!("/v1/policies/{version}")).await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        Command::Rollout(command) => rollout(&client, command, json).await,
    }
}

async fn rollout(client: &Client, command: RolloutCommand, json: bool) -> Result<(), Failure> {
    match command {
        RolloutCommand::Start { plan } => {
            let text = read_file(&plan)?;
            let v = client.post("/v1/rollouts", text).await?;
            print_or(json, &v, || print_rollout(&v));
            Ok(())
        }
        RolloutCommand::List => {
            let v = client.get("/v1/rollouts").await?;
            print_or(json, &v, || {
                for r in v["rollouts"].as_array().into_iter().flatten() {
                    println!(
                        "#{:<4} {:<20} {} -> {}  {} stage {}/{} at {}",
                        r["id"],
                        s(&r["target"]),
                        s(&r["stable"]["version"]),
                        s(&r["canary"]["version"]),
                        s(&r["phase"]),
                        r["stage"],
                        r["stages"],
                        s(&r["weight"])
                    );
                }
            });
            Ok(())
        }
        RolloutCommand::Status { id, target, watch } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            loop {
                let v = client.rollout_with_analysis(id).await?;
                print_or(json, &v, || {
                    print_rollout(&v);
                    print_analysis(&v["analysis"]);
                });
                let active = crate::dashboard::is_active(&v);
                if !watch || !active {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !json {
                    println!();
                }
            }
        }
        RolloutCommand::Watch { id, target } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            watch(client, id, json).await
        }
        RolloutCommand::Pause(a) => client.act(a, "pause", false, json).await,
        RolloutCommand::Resume(a) => client.act(a, "resume", false, json).await,
        RolloutCommand::Promote { act, to_end } => client.act(act, "promote", to_end, json).await,
        RolloutCommand::Rollback(a) => client.act(a, "rollback", false, json).await,
        RolloutCommand::Abort(a) => client.act(a, "abort", false, json).await,
        RolloutCommand::Audit { id, all } => {
            let path = if all {
                "/v1/audit".to_string()
            } else {
                let id = client.resolve(id, None, true).await?;
                format!("/v1/audit?rollout={id}")
            };
            let v = client.get(&path).await?;
            print_or(json, &v, || {
                for e in v["audit"].as_array().into_iter().flatten() {
                    let rollout = e["rollout_id"]
                        .as_i64()
                        .map_or(String::new(), |id| format!("#{id} "));
                    let change = match (e["from"].as_str(), e["to"].as_str()) {
                        (Some(f), Some(t)) => format!("{f} -> {t}  "),
                        _ => String::new(),
                    };
                    println!(
                        "{}  rev {:<4} {}{:<16} {}by {}: {}",
                        utc(e["at_ms"].as_i64().unwrap_or(0)),
                        e["revision"],
                        rollout,
                        s(&e["action"]),
                        change,
                        s(&e["actor"]),
                        s(&e["reason"])
                    );
                }
            });
            Ok(())
        }
    }
}

/// Exit code of `rollout watch` when the rollout ends without the canary promoted.
pub const NOT_PROMOTED: i32 = 4;

async fn watch(client: &Client, id: i64, json: bool) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal() && !json;
    let mut shown: Option<(String, u64)> = None;
    let mut last_audit = 0;
    let mut bar_drawn = false;
    let mut last_plain = std::time::Instant::now();
    loop {
        let v = client.rollout_with_analysis(id).await?;
        let audit = client
            .get(&format!("/v1/audit?rollout={id}&after={last_audit}"))
            .await?;
        let phase = s(&v["phase"]).to_string();
        let stage = v["stage"].as_u64().unwrap_or(0);
        let key = (phase.clone(), stage);
        let mut out = std::io::stdout().lock();
        for e in audit["audit"].as_array().into_iter().flatten() {
            last_audit = e["id"].as_i64().unwrap_or(last_audit);
            if json {
                let _ = writeln!(out, "{}", serde_json::json!({"audit": e}));
                continue;
            }
            if bar_drawn {
                let _ = writeln!(out);
                bar_drawn = false;
            }
            let _ = writeln!(out, "{}", audit_line(e));
        }
        let ended = !crate::dashboard::is_active(&v);
        if json {
            if shown.as_ref() != Some(&key) || ended {
                let _ = writeln!(out, "{v}");
            }
        } else if !ended {
            let line = stage_line(&v, &v["analysis"]);
            if terminal {
                let _ = write!(out, "\r\x1b[2K{}", fit(&line));
                bar_drawn = true;
            } else if shown.as_ref() != Some(&key)
                || last_plain.elapsed() >= Duration::from_secs(10)
            {
                let _ = writeln!(out, "{line}");
                last_plain = std::time::Instant::now();
            }
        }
        let _ = out.flush();
        shown = Some(key);
        if ended {
            if bar_drawn {
                let _ = writeln!(out);
            }
            if !json {
                let _ = writeln!(
                    out,
                    "rollout #{id} {phase}: {} now serves {}",
                    s(&v["target"]),
                    if phase == "promoted" {
                        s(&v["canary"]["version"])
                    } else {
                        s(&v["stable"]["version"])
                    }
                );
            }
            return if phase == "promoted" {
                Ok(())
            } else {
                Err(fail(NOT_PROMOTED, format!("rollout #{id} ended {phase}")))
            };
        }
        drop(out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One audit entry as a watch line: what changed, by whom and why, with the
/// breached gates of an automatic rollback.
fn audit_line(e: &Value) -> String {
    let at = utc(e["at_ms"].as_i64().unwrap_or(0));
    let weight = e["canary_weight_bp"].as_u64().map_or(String::new(), |bp| {
        format!("  canary {}", crate::dashboard::weight(bp))
    });
    let mut line = format!(
        "{}  {:<14} {} -> {}{weight}  by {}: {}",
        &at[11..19],
        s(&e["action"]),
        s(&e["from"]),
        s(&e["to"]),
        s(&e["actor"]),
        s(&e["reason"])
    );
    for c in crate::dashboard::breaches(e) {
        line.push_str(&format!(
            "\n          breach: {} stable {} canary {} ({}, threshold {})",
            s(&c["metric"]),
            crate::dashboard::number(&c["stable"]),
            crate::dashboard::number(&c["canary"]),
            s(&c["change"]),
            s(&c["threshold"])
        ));
    }
    line
}

/// The current stage on one line: weight, a progress bar towards the stage's
/// minimum duration and canary requests, samples and the gates' verdicts.
pub fn stage_line(v: &Value, analysis: &Value) -> String {
    let stage_index = v["stage"].as_u64().unwrap_or(1).saturating_sub(1) as usize;
    let spec = &v["plan"]["stages"][stage_index];
    let min_ms = crate::dashboard::min_duration_ms(spec);
    let min_requests = spec["min_requests"].as_f64().unwrap_or(0.0);
    let elapsed =
        (crate::controller::now_ms() - v["stage_started_ms"].as_i64().unwrap_or(0)).max(0);
    let canary = analysis["canary_requests"].as_f64().unwrap_or(0.0);
    let stable = analysis["stable_requests"].as_f64().unwrap_or(0.0);
    let time_part = if min_ms > 0 {
        (elapsed as f64 / min_ms as f64).min(1.0)
    } else {
        1.0
    };
    let request_part = if min_requests > 0.0 {
        (canary / min_requests).min(1.0)
    } else {
        1.0
    };
    let filled = (time_part.min(request_part) * 20.0).round() as usize;
    let mut counts: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for c in analysis["comparisons"].as_array().into_iter().flatten() {
        counts
            .entry(s(&c["verdict"]))
            .or_default()
            .push(s(&c["metric"]));
    }
    let total: usize = counts.values().map(Vec::len).sum();
    let pass = counts.get("pass").map_or(0, Vec::len);
    let list = |k: &str, label: &str| {
        counts
            .get(k)
            .map_or(String::new(), |m| format!("  {label} {}", m.join(", ")))
    };
    let gates = if analysis.is_null() {
        "  no analysis".to_string()
    } else {
        format!(
            "  gates pass {pass}/{total}{}{}{}",
            list("breach", "BREACH"),
            list("inconclusive", "waiting on"),
            if crate::analysis::telemetry_missing(analysis) {
                "  NO AGENT TELEMETRY"
            } else {
                ""
            }
        )
    };
    format!(
        "stage {}/{} {:>4}{} [{}{}] {:>3}s/{}s  canary {}/{}  stable {}{gates}",
        v["stage"],
        v["stages"],
        s(&v["weight"]),
        if s(&v["phase"]) == "paused" {
            " PAUSED"
        } else {
            ""
        },
        "#".repeat(filled),
        "-".repeat(20 - filled.min(20)),
        elapsed / 1000,
        min_ms / 1000,
        canary as u64,
        min_requests as u64,
        stable as u64,
    )
}

/// Cuts a line to the terminal's width (`COLUMNS`, else 120) so that `\r`
/// redraws it in place.
fn fit(line: &str) -> String {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(120)
        .max(20);
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

async fn run_traffic(args: &TrafficArgs, json: bool) -> Result<(), Failure> {
    use crate::traffic::{ClassMix, Options, Plan, Tally};
    use std::sync::atomic::Ordering::Relaxed;
    let mix = ClassMix::parse(&args.mix).map_err(|e| fail(2, format!("--mix: {e}")))?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(fail(
            2,
            "--rate must be a number of requests per second above 0",
        ));
    }
    if !(0.0..=1.0).contains(&args.stream_share) {
        return Err(fail(2, "--stream-share must be between 0 and 1"));
    }
    let options = Options {
        url: args.url.clone(),
        plan: Plan {
            sessions: args.sessions.max(1),
            mix,
            stream_share: args.stream_share,
            seed: args.seed,
        },
        rate: args.rate,
        concurrency: args.concurrency.clamp(1, 4096),
        duration: args.duration.map(|d| d.0),
        requests: args.requests,
        report_every: Some(args.report_every.0).filter(|d| !d.is_zero() && !json),
    };
    if !json {
        println!(
            "canaryctl traffic: {} req/s from {} sessions to {}",
            args.rate, args.sessions, args.url
        );
    }
    let tally = std::sync::Arc::new(Tally::default());
    let started = std::time::Instant::now();
    tokio::select! {
        result = crate::traffic::run(options, std::sync::Arc::clone(&tally)) => {
            result.map_err(|e| fail(1, format!("{e:#}")))?;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    if json {
        println!("{}", tally.json(started.elapsed()));
    } else {
        println!("{}", tally.line(started.elapsed()));
    }
    if tally.sent.load(Relaxed) > 0 && tally.ok.load(Relaxed) == 0 {
        return Err(fail(
            1,
            format!("no request succeeded: is Envoy listening at {}?", args.url),
        ));
    }
    Ok(())
}

async fn run_agent(args: &AgentArgs) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail(1, format!("cannot listen on {}: {e}", args.listen)))?;
    let address = listener.local_addr().map_err(|e| fail(1, e.to_string()))?;
    println!(
        "canaryctl agent listening on http://{address} (registry {})",
        args.registry
    );
    let state = crate::agent::AgentState::new(&args.registry, args.seed, args.time_scale.max(0.0));
    axum::serve(listener, crate::agent::app(state))
        .await
        .map_err(|e| fail(1, e.to_string()))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn print_or(json: bool, v: &Value, text: impl FnOnce()) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        text();
    }
}

fn print_targets(v: &Value) {
    for t in v["targets"].as_array().into_iter().flatten() {
        let route = &t["route"];
        let canary = route["canary"]["version"]
            .as_str()
            .map_or(String::new(), |c| {
                format!(", canary {c} at {}bp", route["canary_weight_bp"])
            });
        println!(
            "{:<20} stable {}{}  (revision {})",
            s(&t["name"]),
            s(&t["stable"]["version"]),
            canary,
            route["revision"]
        );
    }
}

fn print_rollout(v: &Value) {
    println!(
        "rollout #{}  {}  {} -> {}",
        v["id"],
        s(&v["target"]),
        s(&v["stable"]["version"]),
        s(&v["canary"]["version"])
    );
    let stage_line = match s(&v["phase"]) {
        "progressing" | "paused" => format!(
            "{}, stage {} of {} ({}), canary weight now {}",
            s(&v["phase"]),
            v["stage"],
            v["stages"],
            s(&v["stage_weight"]),
            s(&v["weight"])
        ),
        other => other.to_string(),
    };
    println!("  state     {stage_line}");
    let started = v["stage_started_ms"].as_i64().unwrap_or(0);
    let ago = (crate::controller::now_ms() - started).max(0) / 1000;
    println!("  since     {} ({ago}s ago)", utc(started));
    println!(
        "  salt      {}   route revision {}",
        s(&v["salt"]),
        v["revision"]
    );
}

/// Stable vs canary, metric by metric, with the verdict and sample sizes.
fn print_analysis(a: &Value) {
    if a.is_null() {
        println!("  analysis  none (start the controller with --envoy-admin to compare metrics)");
        return;
    }
    // An ended rollout shows its last decision's comparison (no running count then).
    let failures = a["consecutive_failures"]
        .as_u64()
        .map_or(String::new(), |n| format!(", failed checks in a row {n}"));
    let when = a["decided_ms"].as_i64().map_or(String::new(), |at| {
        format!("  at the last decision, {}", utc(at))
    });
    println!(
        "  requests  stable {}  canary {}   (alpha per gate {:.2e}{failures}){when}",
        crate::dashboard::count(&a["stable_requests"]),
        crate::dashboard::count(&a["canary_requests"]),
        a["alpha"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  verdict",
        "metric", "stable", "canary", "change", "threshold", "n stable/canary"
    );
    let num = crate::dashboard::number;
    for c in a["comparisons"].as_array().into_iter().flatten() {
        println!(
            "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}",
            s(&c["metric"]),
            num(&c["stable"]),
            num(&c["canary"]),
            s(&c["change"]),
            s(&c["threshold"]),
            format!(
                "{}/{}",
                crate::dashboard::count(&c["n_stable"]),
                crate::dashboard::count(&c["n_canary"])
            ),
            s(&c["verdict"])
        );
    }
    let safety = &a["safety"];
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}",
        "safety_violations",
        crate::dashboard::count(&safety["stable"]),
        crate::dashboard::count(&safety["canary"]),
        "",
        "any",
        "",
        s(&safety["verdict"])
    );
    if crate::analysis::telemetry_missing(a) {
        println!("  {}", crate::analysis::TELEMETRY_MISSING);
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from milliseconds since the epoch.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn read_file(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(1, format!("cannot read {}: {e}", path.display())))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    actor: String,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let mut request = request.header("x-actor", &self.actor);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            fail(3, format!("cannot reach the controller at {}: {e}\nIs `canaryctl serve` running? Set --server or CANARYCTL_SERVER.", self.base))
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .unwrap_or("no explanation")
            .to_string();
        let hint = match status.as_u16() {
            401 => "\nGive the API token with --token, CANARYCTL_TOKEN or --token-file.",
            _ => "",
        };
        Err(fail(1, format!("{status}: {message}{hint}")))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A rollout as the API shows it, with its analysis under `analysis`.
    async fn rollout_with_analysis(&self, id: i64) -> Result<Value, Failure> {
        let mut v = self.get(&format!("/v1/rollouts/{id}")).await?;
        let analysis = self.get(&format!("/v1/rollouts/{id}/analysis")).await?;
        v["analysis"] = analysis["analysis"].clone();
        Ok(v)
    }

    async fn post(&self, path: &str, body: String) -> Result<Value, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body))
            .await
    }

    /// The given id, else the active rollout (of `target` if given).
    async fn resolve(
        &self,
        id: Option<i64>,
        target: Option<&str>,
        any_if_none_active: bool,
    ) -> Result<i64, Failure> {
        if let Some(id) = id {
            return Ok(id);
        }
        let v = self.get("/v1/rollouts").await?;
        let all: Vec<&Value> = v["rollouts"].as_array().into_iter().flatten().collect();
        let matching = |r: &&Value| target.is_none_or(|t| s(&r["target"]) == t);
        let active: Vec<&Value> = all
            .iter()
            .copied()
            .filter(matching)
            .filter(|r| crate::dashboard::is_active(r))
            .collect();
        match active.as_slice() {
            [one] => return one["id"].as_i64().ok_or_else(|| fail(1, "bad rollout id")),
            [] => {}
            several => {
                let list: Vec<String> = several
                    .iter()
                    .map(|r| format!("#{} {}", r["id"], s(&r["target"])))
                    .collect();
                return Err(fail(
                    1,
                    format!(
                        "several active rollouts ({}): give an id or --target",
                        list.join(", ")
                    ),
                ));
            }
        }
        if any_if_none_active {
            if let Some(last) = all.iter().copied().rev().find(matching) {
                return last["id"].as_i64().ok_or_else(|| fail(1, "bad rollout id"));
            }
        }
        Err(fail(1, "no active rollout: give a rollout id"))
    }

    async fn act(&self, a: ActArgs, action: &str, to_end: bool, json: bool) -> Result<(), Failure> {
        let id = self.resolve(a.id, a.target.as_deref(), false).await?;
        let mut body = serde_json::json!({"actor": self.actor});
        if let Some(reason) = a.reason {
            body["reason"] = reason.into();
        }
        if to_end {
            body["to_end"] = true.into();
        }
        let v = self
            .post(&format!("/v1/rollouts/{id}/{action}"), body.to_string())
            .await?;
        print_or(json, &v, || print_rollout(&v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_line_shows_progress_verdicts_and_missing_telemetry() {
        let rollout = serde_json::json!({"stage": 1, "stages": 4, "weight": "10%",
            "phase": "progressing", "stage_started_ms": crate::controller::now_ms() - 10_000,
            "plan": {"stages": [{"weight": "10%", "min_duration": "20s", "min_requests": 500}]}});
        let analysis = |missing: bool| {
            serde_json::json!({"canary_requests": 250.0, "stable_requests": 2250.0,
                "telemetry_missing": missing,
                "comparisons": [
                    {"metric": "error_rate", "verdict": "pass"},
                    {"metric": "completion_rate", "verdict": "inconclusive"},
                    {"metric": "abandonment_rate", "verdict": "breach"}]})
        };
        let line = stage_line(&rollout, &analysis(false));
        assert!(
            line.starts_with(
                "stage 1/4  10% [##########----------]  10s/20s  canary 250/500  stable 2250"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("gates pass 1/3  BREACH abandonment_rate  waiting on completion_rate"),
            "{line}"
        );
        assert!(stage_line(&rollout, &analysis(true)).ends_with("  NO AGENT TELEMETRY"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_316_400_000), "2026-11-22T03:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    /// Every command's `--help` ends with an example.
    #[test]
    fn every_command_has_examples() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !help.contains("Example") {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of {missing:?}");
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
