//! `canaryctl plan check`: how long each stage of a plan takes to decide at a given
//! traffic, offline (no controller needed).

use super::{fail, print_or, read_file, Failure};
use crate::analysis::planning::{check_plan, duration, Baseline, PlanCheck};
use crate::rollout::plan::RolloutPlan;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// For each stage and gate: the canary samples and time needed to pass a canary
    /// equal to stable and to roll back one at 1.6× the gate's threshold; flags
    /// gates that cannot decide within max_stage_duration and says what would.
    #[command(
        after_help = "Examples:\n  canaryctl plan check envoy/plans/support-agent.yaml --rate 300\n  canaryctl plan check plan.yaml --rate 40 --sessions 500 --base completion_rate=0.7\n\nExit status 1 when a stage cannot decide. Stable is assumed to behave as the\nbaseline (completion 0.85, errors 0.02, tool errors 0.05, cost CV 0.3, guardrail\n0.03/request, abandonment 0.05, escalation 0.05, log-latency σ 0.5, tokens and turns\nper task CV 0.5); --base changes one value. A plan's own gate (a custom metric or a\nsignal) needs --base NAME=MEAN[:SD] per report or signal, assumed once per request;\na signal gate's delay is added to its times.\nTimes assume sessions share nothing; with --sessions, stages with too few\nsessions in the canary, or whose canary a few sessions would dominate (traffic\nshares Pareto α 1.5, --base session_pareto=A), are flagged."
    )]
    Check {
        /// The plan (YAML or JSON).
        plan: PathBuf,
        /// Requests per second to the target, both versions together.
        #[arg(long)]
        rate: f64,
        /// Active sessions at a time.
        #[arg(long)]
        sessions: Option<f64>,
        /// A baseline value, NAME=VALUE (repeatable).
        #[arg(long = "base")]
        base: Vec<String>,
    },
}

pub fn run(command: PlanCommand, json: bool) -> Result<(), Failure> {
    let PlanCommand::Check {
        plan,
        rate,
        sessions,
        base,
    } = command;
    let text = read_file(&plan)?;
    let plan =
        RolloutPlan::parse(&text).map_err(|e| fail(2, format!("{}: {e}", plan_name(&plan))))?;
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(fail(2, format!("--rate must be above 0, got {rate}")));
    }
    if let Some(s) = sessions.filter(|s| !(*s >= 1.0 && s.is_finite())) {
        return Err(fail(2, format!("--sessions must be at least 1, got {s}")));
    }
    let mut baseline = Baseline::default();
    for assignment in &base {
        baseline
            .set(assignment)
            .map_err(|e| fail(2, format!("--base {e}")))?;
    }
    let check = check_plan(&plan, rate, sessions, &baseline).map_err(|e| fail(2, e))?;
    print_or(json, &check, || print_check(&check));
    if check.ok() {
        Ok(())
    } else {
        Err(fail(1, "some stages cannot decide (see above)"))
    }
}

fn plan_name(path: &std::path::Path) -> String {
    path.display().to_string()
}

fn units(u: Option<f64>) -> String {
    u.map_or("never".into(), |u| format!("{u:.0}"))
}

fn time(s: Option<f64>) -> String {
    s.map_or("never".into(), duration)
}

fn print_check(check: &PlanCheck) {
    println!(
        "at {} requests/s{}:",
        check.rate,
        check
            .sessions
            .map_or(String::new(), |s| format!(", {s:.0} active sessions"))
    );
    for stage in &check.stages {
        println!();
        println!(
            "stage {} ({}%): {:.1} canary requests/s{}",
            stage.stage,
            f64::from(stage.weight_bp) / 100.0,
            stage.canary_rate,
            stage.expected_sessions.map_or(String::new(), |s| format!(
                ", about {s:.0} sessions in the canary{}",
                stage
                    .effective_replicates
                    .map_or(String::new(), |e| format!(
                        " (median {e:.1} effective replicates)"
                    ))
            ))
        );
        println!(
            "  {:<18} {:>14} {:>10} {:>16} {:>10}",
            "gate", "equal: samples", "time", "1.6x: samples", "time"
        );
        for gate in &stage.gates {
            println!(
                "  {:<18} {:>14} {:>10} {:>16} {:>10}{}",
                gate.metric,
                units(gate.pass_units),
                time(gate.pass_seconds),
                units(gate.breach_units),
                time(gate.breach_seconds),
                if gate.problem.is_some() { "  !" } else { "" }
            );
        }
        match stage.seconds_to_advance {
            Some(s) => println!("  an equal canary advances after about {}", duration(s)),
            None => {
                for problem in &stage.problems {
                    println!("  ! {problem}");
                }
            }
        }
    }
    println!();
    match check.seconds_to_promotion {
        Some(s) => println!("an equal canary is promoted after about {}", duration(s)),
        None => println!("this plan cannot promote an equal canary at this traffic"),
    }
}
