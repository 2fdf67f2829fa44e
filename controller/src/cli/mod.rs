//! The command line: `canaryctl serve` and the client commands that talk to it.

mod client;
mod demo;
mod plan;
mod policy;
mod rollout;
mod targets;
mod token;
mod watch;

use crate::analysis::evidence::prometheus::PrometheusOptions;
use crate::api::auth::read_token_file;
use crate::serve::{serve, Evidence, ServeOptions};
use crate::units::{Dur, Weight};
use crate::view::TargetsView;
use clap::{Args, Parser, Subcommand};
use client::Client;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// PEM file of the CA that signed the controller's TLS certificate.
    #[arg(long, env = "CANARYCTL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
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
    /// Targets and their current route tables; the clusters each may route to.
    #[command(
        after_help = "Examples:\n  canaryctl targets --json\n  canaryctl targets bind support-agent agent_stable agent_canary   # admin"
    )]
    Targets {
        #[command(subcommand)]
        command: Option<targets::TargetsCommand>,
    },
    /// Rollout plans, checked offline: how long each stage takes to decide.
    #[command(
        subcommand,
        after_help = "Example:\n  canaryctl plan check envoy/plans/support-agent.yaml --rate 300 --sessions 3000"
    )]
    Plan(plan::PlanCommand),
    /// API tokens: named, scoped, revocable (needs an `admin` token).
    #[command(
        subcommand,
        after_help = "Example:\n  canaryctl token create envoys --scope routes:read"
    )]
    Token(TokenCommand),
    /// Run a demo agent backend that applies the policy named in x-agent-policy.
    #[command(
        after_help = "Example:\n  canaryctl agent --listen 127.0.0.1:8081 --registry http://127.0.0.1:7070\n\nBehaviour per policy and request class comes from the bundle's metadata.demo;\nsend x-request-class to pick a class and x-stream: 1 for telemetry in trailers."
    )]
    Agent(AgentArgs),
    /// Send steady traffic from sticky sessions through Envoy (demo and load).
    #[command(
        after_help = "Examples:\n  canaryctl traffic                                   # 300 req/s from 10000 sessions until Ctrl-C\n  canaryctl traffic --rate 50 --duration 30s --mix refund=0.2,order=0.8\n  canaryctl traffic --requests 1000 --report-every 0s\n\nEach session keeps one request class (x-request-class) for the whole run."
    )]
    Traffic(TrafficArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print its secret (shown this once; only its sha256 is kept).
    #[command(
        after_help = "Scopes: routes:read (Envoys), policies:read (agent backends), read (dashboards,\nCI status checks), operate (start, pause, resume, promote, roll back), admin.\n\nExamples:\n  canaryctl token create envoys --scope routes:read\n  canaryctl token create deploy-bot --scope operate\n  canaryctl token create oncall --scope operate --scope policies:read"
    )]
    Create {
        /// The token's name, as the audit log will show it.
        name: String,
        /// A scope (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  canaryctl token list --json")]
    List,
    /// Revoke a token: refused from the next request on.
    #[command(
        after_help = "Example (rotation):\n  canaryctl token create envoys-2 --scope routes:read   # hand it out, then\n  canaryctl token revoke envoys"
    )]
    Revoke { name: String },
}

#[derive(Args, Debug)]
pub struct TrafficArgs {
    /// Where to send the requests (Envoy's listener).
    #[arg(long, default_value = "http://127.0.0.1:10000/chat")]
    pub url: String,
    /// Number of distinct sessions (x-session-id: user-0 .. user-N-1).
    #[arg(long, default_value_t = 10_000)]
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
    /// A token with the `policies:read` scope for the registry.
    #[arg(long, env = "CANARYCTL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,
    /// Seed of the simulated outcomes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiplies the simulated latency (0 answers at once).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Also act as an LLM judge (simulated): score a sample of the answers and post
    /// the scores to the controller's /v1/signals with this `signals:write` token.
    #[arg(long, env = "CANARYCTL_JUDGE_TOKEN", hide_env_values = true)]
    pub judge_token: Option<String>,
    /// Where the judge posts (default: the registry's controller).
    #[arg(long)]
    pub judge_url: Option<String>,
    /// The target the judged answers belong to.
    #[arg(long, default_value = "support-agent")]
    pub judge_target: String,
    /// The signal's name (a plan's gate reads `signal: NAME`).
    #[arg(long, default_value = "judge_score")]
    pub judge_signal: String,
    /// Share of answers judged.
    #[arg(long, default_value_t = 0.5)]
    pub judge_sample: f64,
    /// How late the scores arrive, MIN..MAX (uniform).
    #[arg(long, default_value = "20s..60s")]
    pub judge_delay: String,
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
    /// Where the analysis reads the Envoys' counts: `sync` (each Envoy reports
    /// its own through the sync channel, `sync.evidence_ms`), `prometheus`
    /// (--prometheus) or `envoy-admin` (every --envoy-admin). Default: prometheus
    /// with --prometheus, else envoy-admin with --envoy-admin, else none (stages
    /// move on time alone).
    #[arg(long, env = "CANARYCTL_EVIDENCE", value_parser = ["sync", "prometheus", "envoy-admin"])]
    pub evidence: Option<String>,
    /// How often the Envoys report (their `sync.evidence_ms`), with --evidence
    /// sync: a cost batch per interval; an Envoy that follows the controller but
    /// has not reported for three holds every stage.
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub evidence_interval: Dur,
    /// Read the evidence from this Prometheus (or Thanos, Mimir, VictoriaMetrics)
    /// instead of --envoy-admin: every Envoy's series, summed, since the stage started.
    #[arg(long, env = "CANARYCTL_PROMETHEUS")]
    pub prometheus: Option<String>,
    /// The label Prometheus gives the target.
    #[arg(long, default_value = "target")]
    pub prometheus_target_label: String,
    /// The label Prometheus gives the policy version.
    #[arg(long, default_value = "policy_version")]
    pub prometheus_version_label: String,
    /// How often the stage windows are recomputed from Prometheus.
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    pub prometheus_interval: Dur,
    /// Slices the cost gate's batches are measured over (at least 2 scrape intervals).
    #[arg(long, default_value = "30s", value_parser = parse_dur)]
    pub prometheus_step: Dur,
    /// Prometheus is lagging (stages held) when its newest sample is older than this.
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    pub prometheus_max_lag: Dur,
    /// Most connections open at once (Envoys' long-polls and the API's; the last
    /// 256 are the API's alone); more are closed at once. Within the open-file
    /// limit, which `serve` raises to its hard limit.
    #[arg(long, default_value_t = crate::serve::http::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most connections one client address may hold open before it has
    /// authenticated a request on them.
    #[arg(long, default_value_t = 512)]
    pub max_unauthenticated_per_address: usize,
    /// Longest a client may take to send a request's headers (also an idle
    /// keep-alive connection's next request).
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub header_timeout: Dur,
    /// Longest a request may take, its body included (a route long-poll: its wait more).
    #[arg(long, default_value = "30s", value_parser = parse_dur)]
    pub request_timeout: Dur,
    /// Route long-polls that may wait at once (one per Envoy); more are answered
    /// 503 with Retry-After (Envoys come back later, at random).
    #[arg(long, default_value_t = 12_000)]
    pub max_waiting_polls: u64,
    /// The most an `operate` token's plan may send to the canary in its first
    /// stage; more (and plans without analysis, or clusters not bound to the
    /// target) need an `admin` token.
    #[arg(long, default_value = "25%", value_parser = Weight::parse)]
    pub operate_max_first_stage: Weight,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let Envoys poll `GET /v1/routes` without a token (for meshes where the
    /// network is the boundary); every other endpoint still needs one.
    #[arg(long)]
    pub open_routes: bool,
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

/// The token a client command sends: `--token`, else the named `--token-file`
/// (which must hold one), else the state directory's token file if there is one.
fn client_token(cli: &Cli, state_dir: &Path) -> anyhow::Result<Option<String>> {
    if let Some(token) = cli
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(token.to_string()));
    }
    match &cli.token_file {
        Some(file) => match read_token_file(file)? {
            Some(token) => Ok(Some(token)),
            None => anyhow::bail!(
                "cannot read the token file {}: it does not exist",
                file.display()
            ),
        },
        None => read_token_file(&state_dir.join("token")),
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

/// The evidence source `serve` reads: `--evidence`, or what the other flags imply.
fn evidence_source(args: &ServeArgs) -> Result<Evidence, String> {
    let prometheus = || {
        args.prometheus.clone().map(|url| {
            Evidence::Prometheus(
                PrometheusOptions {
                    url,
                    target_label: args.prometheus_target_label.clone(),
                    version_label: args.prometheus_version_label.clone(),
                    step: args.prometheus_step.0.max(Duration::from_secs(1)),
                    max_lag: args.prometheus_max_lag.0,
                },
                args.prometheus_interval.0.max(Duration::from_millis(100)),
            )
        })
    };
    match args.evidence.as_deref() {
        Some("sync") if args.prometheus.is_some() => {
            Err("--prometheus is read only with --evidence prometheus".into())
        }
        Some("sync") => Ok(Evidence::Sync {
            interval: args.evidence_interval.0.max(Duration::from_secs(1)),
        }),
        Some("prometheus") => {
            prometheus().ok_or_else(|| "--evidence prometheus needs --prometheus URL".into())
        }
        Some("envoy-admin") if args.prometheus.is_some() => {
            Err("--prometheus is read only with --evidence prometheus".into())
        }
        Some("envoy-admin") if args.envoy_admins.is_empty() => {
            Err("--evidence envoy-admin needs at least one --envoy-admin URL".into())
        }
        Some("envoy-admin") => Ok(Evidence::EnvoyAdmin),
        _ => Ok(prometheus().unwrap_or(if args.envoy_admins.is_empty() {
            Evidence::None
        } else {
            Evidence::EnvoyAdmin
        })),
    }
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
            evidence: evidence_source(args).map_err(|e| fail(2, e))?,
            connections: crate::serve::http::ConnectionLimits {
                max_connections: args.max_connections.max(1),
                header_timeout: args.header_timeout.0.max(Duration::from_millis(100)),
                max_unauthenticated_per_address: args.max_unauthenticated_per_address.max(1),
            },
            open_routes: args.open_routes,
            tls: args.tls_cert.clone().zip(args.tls_key.clone()),
            limits: crate::api::Limits {
                operate: crate::rollout::permit::OperateLimits {
                    max_first_stage: args.operate_max_first_stage,
                },
                max_waiting_polls: args.max_waiting_polls,
                request_timeout: args.request_timeout.0.max(Duration::from_millis(100)),
            },
        })
        .await
        .map_err(|e| fail(1, format!("{e:#}")));
    }
    if let Command::Agent(args) = &cli.command {
        return demo::run_agent(args).await;
    }
    if let Command::Traffic(args) = &cli.command {
        return demo::run_traffic(args, cli.json).await;
    }
    if let Command::Plan(command) = cli.command {
        return plan::run(command, cli.json);
    }
    let token = client_token(&cli, &state_dir).map_err(|e| fail(2, format!("{e:#}")))?;
    let actor = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(file) = &cli.ca_file {
        let pem = std::fs::read(file).map_err(|e| {
            fail(
                2,
                format!("cannot read the CA file {}: {e}", file.display()),
            )
        })?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            fail(
                2,
                format!("{} holds no PEM certificate: {e}", file.display()),
            )
        })?;
        http = http.add_root_certificate(ca);
    }
    let client = Client {
        http: http.build().map_err(|e| fail(1, e.to_string()))?,
        base: cli.server.trim_end_matches('/').to_string(),
        token,
        actor,
    };
    let json = cli.json;
    match cli.command {
        Command::Serve(_) | Command::Agent(_) | Command::Traffic(_) | Command::Plan(_) => Ok(()),
        Command::Targets { command: None } => {
            let v = TargetsView {
                targets: client.fetch("/v1/targets").await?,
                envoys: client.fetch("/v1/envoys").await?,
            };
            print_or(json, &v, || targets::print_targets(&v));
            Ok(())
        }
        Command::Targets {
            command: Some(command),
        } => targets::run(&client, command, json).await,
        Command::Policy(command) => policy::run(&client, command, json).await,
        Command::Token(command) => token::run(&client, command, json).await,
        Command::Rollout(command) => rollout::run(&client, command, json).await,
    }
}

pub(super) fn print_or<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce()) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        text();
    }
}

pub(super) fn read_file(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(1, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
