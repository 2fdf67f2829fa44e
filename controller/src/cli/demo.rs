//! `canaryctl agent` and `canaryctl traffic`: the demo's backend and load, run
//! from the same binary as the control plane.

use super::{fail, AgentArgs, Failure, TrafficArgs};

pub(super) async fn run_traffic(args: &TrafficArgs, json: bool) -> Result<(), Failure> {
    use crate::demo::traffic::{ClassMix, Options, Plan, Tally};
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
        result = crate::demo::traffic::run(options, std::sync::Arc::clone(&tally)) => {
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

pub(super) async fn run_agent(args: &AgentArgs) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail(1, format!("cannot listen on {}: {e}", args.listen)))?;
    let address = listener.local_addr().map_err(|e| fail(1, e.to_string()))?;
    let mut state = crate::demo::agent::AgentState::new(
        &args.registry,
        args.registry_token.clone(),
        args.seed,
        args.time_scale.max(0.0),
    );
    if let Some(token) = &args.judge_token {
        use crate::demo::judge::{parse_delay, Judge, JudgeConfig};
        let delay =
            parse_delay(&args.judge_delay).map_err(|e| fail(2, format!("--judge-delay {e}")))?;
        if !(0.0..=1.0).contains(&args.judge_sample) {
            return Err(fail(
                2,
                format!(
                    "--judge-sample must be between 0 and 1, got {}",
                    args.judge_sample
                ),
            ));
        }
        let judge = std::sync::Arc::new(Judge::new(
            JudgeConfig {
                url: args
                    .judge_url
                    .clone()
                    .unwrap_or_else(|| args.registry.clone()),
                token: token.clone(),
                target: args.judge_target.clone(),
                signal: args.judge_signal.clone(),
                sample: args.judge_sample,
                delay,
            },
            // Unique among the agents of one controller: their ports differ.
            format!("{}-{}", address.port(), args.seed),
        ));
        // (stderr: stdout carries the one "listening" line scripts wait for.)
        eprintln!(
            "judging {:.0}% of the answers as `{}`, posted {}..{} later",
            args.judge_sample * 100.0,
            args.judge_signal,
            delay.0,
            delay.1
        );
        tokio::spawn(std::sync::Arc::clone(&judge).run());
        state = state.with_judge(judge);
    }
    println!(
        "canaryctl agent listening on http://{address} (registry {})",
        args.registry
    );

    axum::serve(listener, crate::demo::agent::app(state))
        .await
        .map_err(|e| fail(1, e.to_string()))
}
