//! Continuous batching: one worker thread owns the model's compute. Requests join the running
//! batch as they arrive (prefilled on admission), every unfinished sequence decodes one token per
//! step in a single batched forward call, and each finished sequence is answered and leaves at
//! once. A request's tokens do not depend on what else is in the batch: every row of a batched
//! forward is computed exactly as it would be alone, and each request has its own sampler.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::ModelError;
use crate::generate::{Generation, Stop, stop_reason};
use crate::model::{Cache, Forward, Model, Segment};
use crate::sample::Sampler;

/// Turns generated tokens into text for stop strings.
pub type Detokenize = Arc<dyn Fn(&[u32]) -> String + Send + Sync>;

struct Job {
    prompt: Vec<u32>,
    sampler: Sampler,
    stop: Stop,
    reply: tokio::sync::oneshot::Sender<Result<Generation, ModelError>>,
}

struct Running {
    cache: Cache,
    out: Vec<u32>,
    next: u32,
    sampler: Sampler,
    stop: Stop,
    reply: tokio::sync::oneshot::Sender<Result<Generation, ModelError>>,
}

/// The handle requests are sent through; dropping every handle stops the worker.
#[derive(Clone)]
pub struct Batcher {
    jobs: Sender<Job>,
}

impl Batcher {
    /// Starts the worker. `max_batch` bounds the sequences decoding together.
    pub fn start(model: Arc<Model>, detokenize: Detokenize, max_batch: usize) -> Batcher {
        let (jobs, rx) = channel();
        std::thread::Builder::new()
            .name("envsynth-batcher".into())
            .spawn(move || run(&model, &detokenize, &rx, max_batch.max(1)))
            .expect("the batcher thread starts");
        Batcher { jobs }
    }

    /// Queues a generation; the answer arrives when the sequence finishes.
    pub async fn generate(
        &self,
        prompt: Vec<u32>,
        sampler: Sampler,
        stop: Stop,
    ) -> Result<Generation, ModelError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                prompt,
                sampler,
                stop,
                reply,
            })
            .map_err(|_| ModelError::Batcher("the batcher has stopped".into()))?;
        answer
            .await
            .map_err(|_| ModelError::Batcher("the batcher dropped the request".into()))?
    }
}

fn run(model: &Model, detokenize: &Detokenize, jobs: &Receiver<Job>, max_batch: usize) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        // Admit: wait when idle, else take whatever is queued, up to the batch bound.
        while running.len() < max_batch {
            let job = if running.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            if let Some(r) = admit(model, job) {
                running.push(r);
            }
        }
        // Every admitted sequence has a sampled token; record it and retire the finished.
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            r.out.push(r.next);
            let limit = model.cfg.max_position_embeddings;
            if let Some(finish) =
                stop_reason(&r.stop, &r.out, r.cache.len(), limit, detokenize.as_ref())
            {
                let r = running.swap_remove(i);
                let _ = r.reply.send(Ok(Generation {
                    tokens: r.out,
                    finish,
                }));
            } else {
                i += 1;
            }
        }
        if running.is_empty() {
            continue;
        }
        // One decode step for everyone still running.
        let tokens: Vec<[u32; 1]> = running.iter().map(|r| [r.next]).collect();
        let mut segments: Vec<Segment<'_>> = running
            .iter_mut()
            .zip(&tokens)
            .map(|(r, t)| Segment {
                cache: &mut r.cache,
                tokens: t,
            })
            .collect();
        match model.forward(&mut segments, Forward::DECODE) {
            Ok(logits) => {
                for (r, l) in running.iter_mut().zip(&logits) {
                    r.next = r.sampler.sample(l);
                }
            }
            Err(e) => {
                for r in running.drain(..) {
                    let _ = r
                        .reply
                        .send(Err(ModelError::Batcher(format!("decode step failed: {e}"))));
                }
            }
        }
    }
}

/// Prefills a new request and samples its first token; answers at once if it cannot start.
fn admit(model: &Model, job: Job) -> Option<Running> {
    let Job {
        prompt,
        mut sampler,
        stop,
        reply,
    } = job;
    if prompt.is_empty() {
        let _ = reply.send(Err(ModelError::Empty));
        return None;
    }
    let mut cache = Cache::new(model);
    match model.prefill(&mut cache, &prompt) {
        Ok(logits) => Some(Running {
            next: sampler.sample(&logits),
            cache,
            out: Vec::new(),
            sampler,
            stop,
            reply,
        }),
        Err(e) => {
            let _ = reply.send(Err(e));
            None
        }
    }
}
