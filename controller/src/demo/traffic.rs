//! `canaryctl traffic`: a traffic generator for demos and tests. A fixed set of
//! sticky sessions (`x-session-id: user-N`), each with one request class
//! (`x-request-class`, drawn from a mix), sends requests at a steady rate through
//! Envoy; a share of them ask for a streamed answer (`x-stream: 1`). It stops after
//! `--duration` or `--requests`, or on Ctrl-C, and prints what it sent and which
//! policy answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Request classes and their shares, e.g. `refund=0.2,order=0.5,delivery=0.3`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMix(Vec<(String, f64)>);

impl ClassMix {
    pub fn parse(text: &str) -> Result<ClassMix, String> {
        let mut classes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: write class=share, e.g. refund=0.2"))?;
            let name = name.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "`{name}`: a class name is letters, digits, - and _"
                ));
            }
            let share: f64 = share
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("`{part}`: the share must be a number ≥ 0"))?;
            classes.push((name.to_string(), share));
        }
        let total: f64 = classes.iter().map(|(_, s)| s).sum();
        if classes.is_empty() || total <= 0.0 {
            return Err("the mix needs at least one class with a share above 0".into());
        }
        Ok(ClassMix(
            classes.into_iter().map(|(n, s)| (n, s / total)).collect(),
        ))
    }

    /// The class at `u` in [0, 1) of the cumulative shares.
    pub fn pick(&self, u: f64) -> &str {
        let mut acc = 0.0;
        for (name, share) in &self.0 {
            acc += share;
            if u < acc {
                return name;
            }
        }
        self.0.last().map_or("general", |(name, _)| name)
    }
}

/// splitmix64: the session's class and stream choices are reproducible per seed.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The `n`th request of a run: which session, its class, streamed or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub session: String,
    pub class: &'a str,
    pub stream: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub sessions: u64,
    pub mix: ClassMix,
    pub stream_share: f64,
    pub seed: u64,
}

impl Plan {
    pub fn request(&self, n: u64) -> Request<'_> {
        let draw = mix64(self.seed ^ mix64(n));
        let session = draw % self.sessions.max(1);
        // A session keeps its class for the whole run.
        let class = self
            .mix
            .pick(unit(mix64(self.seed.wrapping_add(session) ^ 0xC1A5_5C1A)));
        let stream = unit(mix64(draw)) < self.stream_share;
        Request {
            session: format!("user-{session}"),
            class,
            stream,
        }
    }
}

/// What a run sent and got back.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub http_errors: AtomicU64,
    pub failed: AtomicU64,
    pub by_policy: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// The tally for scripts (`canaryctl traffic --json`).
    pub fn json(&self, elapsed: Duration) -> serde_json::Value {
        let by_policy = self.by_policy.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "seconds": elapsed.as_secs_f64(),
            "sent": self.sent.load(Relaxed),
            "ok": self.ok.load(Relaxed),
            "http_errors": self.http_errors.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "by_policy": by_policy.clone(),
        })
    }

    pub fn line(&self, elapsed: Duration) -> String {
        let by_policy = self.by_policy.lock().unwrap_or_else(|p| p.into_inner());
        let policies: Vec<String> = by_policy.iter().map(|(v, n)| format!("{v} {n}")).collect();
        format!(
            "{:>6.1}s  sent {}  ok {}  http errors {}  failed {}  by policy: {}",
            elapsed.as_secs_f64(),
            self.sent.load(Relaxed),
            self.ok.load(Relaxed),
            self.http_errors.load(Relaxed),
            self.failed.load(Relaxed),
            if policies.is_empty() {
                "-".to_string()
            } else {
                policies.join(", ")
            }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub plan: Plan,
    pub rate: f64,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub report_every: Option<Duration>,
}

/// Sends requests until the duration or count is reached (or forever without
/// either), counting into `tally`.
pub async fn run(options: Options, tally: Arc<Tally>) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let plan = Arc::new(options.plan);
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = options.rate.max(0.0) * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut n: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_report = options.report_every.map(|every| start + every);
    'outer: loop {
        interval.tick().await;
        if options.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if let (Some(at), Some(every)) = (next_report, options.report_every) {
            if Instant::now() >= at {
                println!("{}", tally.line(start.elapsed()));
                next_report = Some(at + every);
            }
        }
        owed += per_tick;
        while owed >= 1.0 {
            if options.requests.is_some_and(|max| n >= max) {
                break 'outer;
            }
            owed -= 1.0;
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break 'outer;
            };
            let request = plan.request(n);
            n += 1;
            let mut builder = client
                .get(&options.url)
                .header("x-session-id", &request.session)
                .header("x-request-class", request.class);
            if request.stream {
                builder = builder.header("x-stream", "1");
            }
            let tally = Arc::clone(&tally);
            tally.sent.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let _permit = permit;
                match builder.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body: serde_json::Value =
                            response.json().await.unwrap_or(serde_json::Value::Null);
                        if status.is_success() {
                            tally.ok.fetch_add(1, Relaxed);
                        } else {
                            tally.http_errors.fetch_add(1, Relaxed);
                        }
                        if let Some(policy) = body["policy"].as_str() {
                            let mut by_policy =
                                tally.by_policy.lock().unwrap_or_else(|p| p.into_inner());
                            *by_policy.entry(policy.to_string()).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        tally.failed.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    }
    // Let the requests in flight finish.
    let _ = permits
        .acquire_many(options.concurrency.max(1) as u32)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_normalise_and_refuse_nonsense() {
        let mix = ClassMix::parse("refund=1, order=3").unwrap();
        assert_eq!(mix.pick(0.0), "refund");
        assert_eq!(mix.pick(0.24), "refund");
        assert_eq!(mix.pick(0.26), "order");
        assert_eq!(mix.pick(0.999_999), "order");
        for bad in [
            "",
            "refund",
            "refund=x",
            "refund=-1",
            "=1",
            "re fund=1",
            "a=0",
        ] {
            assert!(ClassMix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sessions_keep_their_class_and_the_mix_holds() {
        let plan = Plan {
            sessions: 2000,
            mix: ClassMix::parse("refund=0.2,order=0.8").unwrap(),
            stream_share: 0.1,
            seed: 7,
        };
        let mut class_of: std::collections::HashMap<String, String> = Default::default();
        let (mut refunds, mut streams) = (0, 0);
        let total = 50_000;
        for n in 0..total {
            let r = plan.request(n);
            let class = class_of
                .entry(r.session.clone())
                .or_insert_with(|| r.class.to_string());
            assert_eq!(class, r.class, "a session changed its class");
            refunds += u32::from(r.class == "refund");
            streams += u32::from(r.stream);
        }
        assert_eq!(class_of.len(), 2000, "every session is used");
        let refund_share = f64::from(refunds) / total as f64;
        let stream_share = f64::from(streams) / total as f64;
        assert!((0.16..0.24).contains(&refund_share), "{refund_share}");
        assert!((0.09..0.11).contains(&stream_share), "{stream_share}");
        // The same seed gives the same run.
        assert_eq!(plan.request(12), plan.request(12));
    }
}
