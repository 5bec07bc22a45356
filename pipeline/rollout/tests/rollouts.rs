//! The whole loop against the simulated policy over real loopback HTTP: the oracle passes every
//! certified task, the random agent none, the noisy oracle as often as theory says, and a server
//! that fails is retried and then recorded as an infrastructure failure.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use envsynth_core::chat::{ChatMessage, ChatRequest, Continuation, TurnTokens};
use envsynth_core::{EnvRef, Environment, FailureKind, Task, TaskRequest, env::generate};
use envsynth_rollout::score::summarize;
use envsynth_rollout::{
    ClientOptions, Limits, OpenAiPolicy, Policy, PolicyError, Reply, Rollout, Stop, TokenTrace,
    run, sample_seeds,
};
use envsynth_server::simulated::{self, Agent, FaultKind, Faults};
use envsynth_server::{Resolved, Verifiers};
use envsynth_travel::TravelPlanning;

struct Native(Arc<TravelPlanning>);

impl Verifiers for Native {
    fn environment(&self, env: &EnvRef) -> Result<Resolved, String> {
        assert_eq!(*env, self.0.spec().env_ref());
        Ok(Resolved {
            env: self.0.clone(),
            sandboxed: false,
        })
    }
}

fn tasks(n: u64) -> (Arc<TravelPlanning>, Vec<Task>) {
    let env = Arc::new(TravelPlanning::new());
    let levels = ["easy", "medium", "hard"];
    let tasks = (0..n)
        .map(|index| {
            generate(
                env.as_ref(),
                &TaskRequest {
                    seed: 77,
                    index,
                    level: levels[index as usize % 3].into(),
                    overrides: Value::Null,
                },
            )
            .unwrap()
            .task
        })
        .collect();
    (env, tasks)
}

async fn serve(tasks: &[Task], env: &Arc<TravelPlanning>, agent: Agent, faults: Faults) -> String {
    let router = simulated::router(tasks, &Native(env.clone()), agent, faults).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(envsynth_server::serve(
        listener,
        router,
        std::future::pending(),
    ));
    format!("http://{addr}/v1")
}

fn quick() -> ClientOptions {
    ClientOptions {
        concurrency: 16,
        timeout: Duration::from_secs(20),
        retries: 3,
        backoff: Duration::from_millis(1),
        api_key: None,
        token_ids: false,
    }
}

async fn rollouts(
    url: &str,
    env: &Arc<TravelPlanning>,
    tasks: &[Task],
    k: u32,
    options: ClientOptions,
    limits: Limits,
) -> Vec<Rollout> {
    let policy = Arc::new(OpenAiPolicy::new(url, "sim", options).unwrap());
    let limits = Arc::new(limits);
    let mut handles = Vec::new();
    for task in tasks {
        let prepared: Arc<dyn envsynth_core::PreparedTask> = Arc::from(env.prepare(task).unwrap());
        for seed in sample_seeds(9, &task.id, k) {
            let (policy, limits, task, prepared) = (
                policy.clone(),
                limits.clone(),
                task.clone(),
                prepared.clone(),
            );
            handles.push(tokio::spawn(async move {
                run(policy.as_ref(), &task, prepared.as_ref(), seed, &limits).await
            }));
        }
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_passes_every_certified_task_and_the_random_agent_none() {
    let (env, tasks) = tasks(12);
    let url = serve(&tasks, &env, Agent::Oracle, Faults::default()).await;
    let got = rollouts(&url, &env, &tasks, 2, quick(), Limits::default()).await;
    let s = summarize(&got, &[1, 2]);
    assert_eq!(s.overall.pass_at[&1], 1.0, "{:?}", s.failed_checks);
    assert_eq!((s.rollouts, s.masked), (24, 0));
    for r in &got {
        assert_eq!(r.stop, Stop::Answered);
        assert!(
            r.tool_steps >= 2,
            "the oracle uses the tools and submits with one"
        );
        let last = r
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "assistant")
            .unwrap();
        assert_eq!(last.tool_calls[0].function.name, "submit_plan");
        // Tool results went back to the model, answering its calls by id.
        let tool = r.messages.iter().find(|m| m.role == "tool").unwrap();
        assert_eq!(tool.tool_call_id.as_deref(), Some("call_0"));
        assert!(
            tool.content
                .as_deref()
                .unwrap()
                .contains("\"status\":\"ok\"")
        );
    }
    assert_eq!(s.by_level.len(), 3);

    let url = serve(&tasks, &env, Agent::Random, Faults::default()).await;
    let got = rollouts(&url, &env, &tasks, 4, quick(), Limits::default()).await;
    let s = summarize(&got, &[1, 4]);
    assert_eq!(s.overall.pass_at[&1], 0.0);
    assert_eq!(
        s.masked, 0,
        "a wrong agent is not an infrastructure failure"
    );
    assert!(!s.failed_checks.is_empty() || s.metrics.delivery_rate < 1.0);
}

/// Each decision errs with probability p, and any error fails the task, so a task with d
/// decisions passes with q = (1 - p)^d. Over N tasks × n rollouts the measured mean pass@1 must
/// lie within 4 standard errors of mean(q), and pass@4 within 4 standard errors (bounded by the
/// binomial variance of the per-task mean) of mean(1 - (1 - q)^4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noisy_oracle_passes_as_often_as_theory_says() {
    let (env, tasks) = tasks(30);
    let p = 0.08;
    let n = 8;
    let url = serve(&tasks, &env, Agent::Noisy(p), Faults::default()).await;
    let got = rollouts(&url, &env, &tasks, n, quick(), Limits::default()).await;
    let s = summarize(&got, &[1, 4]);
    let native = Native(env.clone());
    let qs: Vec<f64> = tasks
        .iter()
        .map(|t| (1.0 - p).powi(simulated::decisions(t, &native).unwrap() as i32))
        .collect();
    let nt = qs.len() as f64;
    let want1 = qs.iter().sum::<f64>() / nt;
    let se1 = (qs.iter().map(|q| q * (1.0 - q) / f64::from(n)).sum::<f64>()).sqrt() / nt;
    let got1 = s.overall.pass_at[&1];
    assert!(
        (got1 - want1).abs() <= 4.0 * se1,
        "pass@1 {got1:.4}, expected {want1:.4} ± {:.4}",
        4.0 * se1
    );
    let want4 = qs.iter().map(|q| 1.0 - (1.0 - q).powi(4)).sum::<f64>() / nt;
    let got4 = s.overall.pass_at[&4];
    assert!(
        (got4 - want4).abs() <= 4.0 * se1.max(0.02),
        "pass@4 {got4:.4}, expected {want4:.4}"
    );
    // pass^k: all of 4 attempts pass with q^4; one attempt is pass@1.
    let want_all4 = qs.iter().map(|q| q.powi(4)).sum::<f64>() / nt;
    let got_all4 = s.overall.pass_hat[&4];
    assert!(
        (got_all4 - want_all4).abs() <= 4.0 * se1.max(0.02),
        "pass^4 {got_all4:.4}, expected {want_all4:.4}"
    );
    assert!(got_all4 < got1 && got1 < got4, "pass^4 < pass@1 < pass@4");
    assert!((s.overall.pass_hat[&1] - got1).abs() < 1e-12);
    assert!(got1 < 1.0 && got1 > 0.3, "{got1}");
    // The noisy agent's malformed tool calls came back to it as tool errors, not crashes.
    assert!(got.iter().any(|r| r.messages.iter().any(|m| {
        m.role == "tool"
            && m.content
                .as_deref()
                .unwrap_or("")
                .contains("invalid_arguments")
    })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_is_retried_then_recorded_as_an_infrastructure_failure() {
    let (env, tasks) = tasks(3);
    for kind in [
        FaultKind::ServerError,
        FaultKind::Malformed,
        FaultKind::Drop,
    ] {
        // Every other request fails: retries carry every rollout through.
        let url = serve(&tasks, &env, Agent::Oracle, Faults { every: 2, kind }).await;
        let got = rollouts(&url, &env, &tasks, 2, quick(), Limits::default()).await;
        let s = summarize(&got, &[1]);
        assert_eq!((s.masked, s.overall.pass_at[&1]), (0, 1.0), "{kind:?}");
        // Every request fails: each rollout ends as a masked policy error, never a zero.
        let url = serve(&tasks, &env, Agent::Oracle, Faults { every: 1, kind }).await;
        let got = rollouts(&url, &env, &tasks, 2, quick(), Limits::default()).await;
        for r in &got {
            assert!(
                matches!(&r.stop, Stop::PolicyError(m) if m.contains("4 attempt")),
                "{kind:?}: {:?}",
                r.stop
            );
            assert!(r.verdict.mask);
            assert_eq!(r.verdict.failure_kind, FailureKind::PolicyError);
        }
        let s = summarize(&got, &[1]);
        assert_eq!(s.masked, 6);
        assert!(s.overall.pass_at.is_empty(), "no attempts, so no pass@k");
        assert_eq!(s.masked_kinds["policy_error"], 6);
    }
    // Nobody listening at all.
    let got = rollouts(
        "http://127.0.0.1:9/v1",
        &env,
        &tasks[..1],
        1,
        quick(),
        Limits::default(),
    )
    .await;
    assert!(matches!(got[0].stop, Stop::PolicyError(_)));
    assert!(got[0].verdict.mask);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_rollouts_as_the_agents_failure() {
    let (env, tasks) = tasks(2);
    let url = serve(&tasks, &env, Agent::Oracle, Faults::default()).await;
    let limits = Limits {
        max_turns: 1,
        ..Limits::default()
    };
    let got = rollouts(&url, &env, &tasks, 1, quick(), limits).await;
    for r in &got {
        assert_eq!(r.stop, Stop::TurnLimit);
        assert_eq!(r.turns, 1);
        assert!(!r.verdict.mask && !r.verdict.passed);
        assert_eq!(r.verdict.failure_kind, FailureKind::EmptySubmission);
    }
    // Same seeds, same conversations.
    let again = rollouts(
        &url,
        &env,
        &tasks,
        1,
        quick(),
        Limits {
            max_turns: 1,
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(got, again);
}

/// The oracle's replies, with made-up tokens as a policy that knows its tokens reports them:
/// each prompt continues the request's token prefix with one id per message it does not
/// cover, each completion is two ids. `break_at` makes that turn's prompt rewrite the prefix.
/// Each reply holds a continuation, which the next request must bring back.
struct Tokened {
    inner: OpenAiPolicy,
    break_at: Option<usize>,
    last: std::sync::Mutex<Option<Continuation>>,
}

impl Policy for Tokened {
    fn name(&self) -> &str {
        "tokened"
    }

    async fn complete(&self, r: &ChatRequest) -> Result<Reply, PolicyError> {
        let mut reply = self.inner.complete(r).await?;
        let turn = r.messages.iter().filter(|m| m.role == "assistant").count();
        let from = match &r.prefix {
            Some(p) => {
                // The prefix covers the conversation through the last reply, and holds on to
                // the continuation that reply gave.
                assert_eq!(r.messages[p.messages - 1].role, "assistant");
                assert!(r.messages[p.messages..].iter().all(|m| m.role == "tool"));
                assert_eq!(p.continuation, *self.last.lock().unwrap());
                p.messages
            }
            None => 0,
        };
        let continuation = Continuation(Arc::new(turn));
        *self.last.lock().unwrap() = Some(continuation.clone());
        let mut prompt = r.prefix.as_ref().map_or_else(Vec::new, |p| p.ids.clone());
        prompt.extend((from..r.messages.len()).map(|i| 1000 + i as u32));
        if self.break_at == Some(turn) {
            prompt[0] += 1;
        }
        let t = turn as u32;
        reply.tokens = Some(TurnTokens {
            prompt_ids: prompt,
            completion_ids: vec![10 * t, 10 * t + 1],
            completion_logprobs: vec![-0.5, -0.25],
            continuation: Some(continuation),
        });
        Ok(reply)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_tokens_become_one_trace_with_a_loss_mask() {
    let (env, tasks) = tasks(3);
    let url = serve(&tasks, &env, Agent::Oracle, Faults::default()).await;
    for break_at in [None, Some(1)] {
        let policy = Tokened {
            inner: OpenAiPolicy::new(&url, "sim", quick()).unwrap(),
            break_at,
            last: std::sync::Mutex::new(None),
        };
        for task in &tasks {
            let prepared = env.prepare(task).unwrap();
            let r = run(&policy, task, prepared.as_ref(), 5, &Limits::default()).await;
            assert!(r.verdict.passed, "{:?}", r.verdict);
            assert!(r.turns >= 2, "the oracle searches, then submits");
            // The rollout let go of the last continuation when it ended.
            let last = policy.last.lock().unwrap().take().unwrap();
            assert_eq!(Arc::strong_count(&last.0), 1);
            let mut want = (Vec::new(), Vec::new(), Vec::new());
            let mut turn = 0;
            // What the policy saw and wrote: up to its last reply (the submission's tool result
            // after it went to no one).
            let last = r
                .messages
                .iter()
                .rposition(|m| m.role == "assistant")
                .unwrap();
            for (i, m) in r.messages[..=last].iter().enumerate() {
                if m.role == "assistant" {
                    want.0.extend([10 * turn, 10 * turn + 1]);
                    want.1.extend([1, 1]);
                    want.2.extend([-0.5, -0.25]);
                    turn += 1;
                } else {
                    want.0.push(1000 + i as u32);
                    want.1.push(0);
                    want.2.push(0.0);
                }
            }
            let (ids, mask, logprobs) = want;
            let whole = TokenTrace {
                ids: ids.clone(),
                mask: mask.clone(),
                logprobs: logprobs.clone(),
            };
            if break_at.is_none() {
                assert_eq!(r.tokens, [whole]);
            } else {
                // The second turn's prompt rewrote the first token, so a second sequence starts
                // there: all of that prompt, the first reply in it as prompt, then the rest.
                let first_reply = r
                    .messages
                    .iter()
                    .position(|m| m.role == "assistant")
                    .unwrap();
                let cut = first_reply + 2;
                let mut second = whole.clone();
                second.ids[0] += 1;
                second.mask[..cut].fill(0);
                second.logprobs[..cut].fill(0.0);
                let first = TokenTrace {
                    ids: ids[..cut].to_vec(),
                    mask: mask[..cut].to_vec(),
                    logprobs: logprobs[..cut].to_vec(),
                };
                assert_eq!(r.tokens, [first, second]);
                assert_eq!(
                    summarize(std::slice::from_ref(&r), &[1]).token_traces.split,
                    1
                );
            }
            // The sequences travel with the record.
            let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
    }
    // A policy that reports no tokens (an OpenAI-compatible server) leaves no trace, and its
    // records keep their earlier form.
    let plain = OpenAiPolicy::new(&url, "sim", quick()).unwrap();
    let prepared = env.prepare(&tasks[0]).unwrap();
    let r = run(&plain, &tasks[0], prepared.as_ref(), 5, &Limits::default()).await;
    assert!(r.tokens.is_empty());
    assert!(!serde_json::to_string(&r).unwrap().contains("\"tokens"));
}

/// Asked for tokens, a server answers as vLLM does (`prompt_token_ids`, `choices[0].token_ids`,
/// `choices[0].logprobs`); the simulated policy's template is prefix-stable, so every rollout
/// keeps one trace, and each generated run in it is one reply exactly as it came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asked_for_tokens_gives_each_rollout_one_trace_of_what_it_wrote() {
    let (env, tasks) = tasks(6);
    let url = serve(&tasks, &env, Agent::Noisy(0.3), Faults::default()).await;
    let asking = || ClientOptions {
        token_ids: true,
        ..quick()
    };
    let a = rollouts(&url, &env, &tasks, 2, asking(), Limits::default()).await;
    let b = rollouts(&url, &env, &tasks, 2, asking(), Limits::default()).await;
    assert_eq!(a, b, "traces replay exactly");
    // The simulated tokenizer: bytes, then an opener per role (258: assistant), 260 closing.
    let (open_assistant, end) = (258, 260);
    for r in &a {
        let [t] = r.tokens.as_slice() else {
            panic!(
                "each prompt continues the turn before: {:?}",
                r.tokens.len()
            )
        };
        assert_eq!((t.mask.len(), t.logprobs.len()), (t.ids.len(), t.ids.len()));
        let generated = t.mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(
            generated as u64, r.usage.completion_tokens,
            "{}",
            r.rollout_id
        );
        let replies: Vec<&ChatMessage> = r
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .collect();
        assert_eq!(replies.len() as u32, r.turns);
        // The generated runs, in order, each opened by the template and closed by the model.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, &m) in t.mask.iter().enumerate() {
            match (m, runs.last_mut()) {
                (1, Some(run)) if run.1 == i => run.1 = i + 1,
                (1, _) => runs.push((i, i + 1)),
                _ => assert_eq!(t.logprobs[i], 0.0, "prompt tokens have no log-probability"),
            }
        }
        assert_eq!(runs.len(), replies.len());
        for (&(from, to), m) in runs.iter().zip(&replies) {
            assert_eq!(t.ids[from - 1], open_assistant);
            assert_eq!(t.ids[to - 1], end);
            let mut text = m.content.clone().unwrap_or_default();
            for c in &m.tool_calls {
                text += &format!("\n{} {}", c.function.name, c.function.arguments);
            }
            let wrote: Vec<u32> = text.bytes().map(u32::from).collect();
            assert_eq!(t.ids[from..to - 1], wrote[..], "{}", r.rollout_id);
            assert!(t.logprobs[from..to].iter().all(|&l| l <= 0.0));
        }
        assert!(t.logprobs.iter().any(|&l| l < 0.0));
    }
    let summary = summarize(&a, &[1]);
    assert_eq!(
        (summary.token_traces.carried, summary.token_traces.split),
        (a.len() as u64, 0)
    );
    // Not asked, the same server sends no tokens and the records have none.
    let plain = rollouts(&url, &env, &tasks[..1], 1, quick(), Limits::default()).await;
    assert!(plain[0].tokens.is_empty());
    assert_eq!(summarize(&plain, &[1]).token_traces, Default::default());
}
