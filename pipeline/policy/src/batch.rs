//! Continuous batching: one worker thread owns the model's compute. Requests join the running
//! batch as they arrive (prefilled on admission), every unfinished sequence decodes one token per
//! step in a single batched forward call, and each finished sequence is answered and leaves at
//! once. A request's tokens do not depend on what else is in the batch: every row of a batched
//! forward is computed exactly as it would be alone, and each request has its own sampler.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::ModelError;
use crate::generate::{Generation, Stop, stop_reason};
use crate::gpu::model::{GpuModel, GpuSeq};
use crate::model::Logits;
use crate::model::{Cache, Model};
use crate::sample::Sampler;

/// What the batcher drives: a model that prefills one sequence at a time and decodes many
/// together. The CPU reference (`Arc<Model>`) and the GPU model both are one.
pub trait Backend: Send + 'static {
    /// One sequence's state (its cache).
    type Seq: Send;
    /// The most tokens a sequence may hold.
    fn context_limit(&self) -> usize;
    /// A new sequence holding `prompt`, and the logits after its last token.
    fn prefill(&mut self, prompt: &[u32]) -> Result<(Self::Seq, Vec<f32>), ModelError>;
    /// A new sequence holding the first `len` tokens of `seq`, as prefilling them would leave
    /// it (decoding only appends), without computing anything.
    fn fork(&mut self, seq: &Self::Seq, len: usize) -> Result<Self::Seq, ModelError>;
    /// One token more for each sequence, all in one step; logits per sequence.
    fn decode(&mut self, batch: &mut [(&mut Self::Seq, u32)]) -> Result<Vec<Vec<f32>>, ModelError>;
    fn seq_len(seq: &Self::Seq) -> usize;
    /// Gives back what a finished sequence held.
    fn release(&mut self, seq: Self::Seq);
}

impl Backend for Arc<Model> {
    type Seq = Cache;

    fn context_limit(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<(Cache, Vec<f32>), ModelError> {
        let mut cache = Cache::new(self);
        let logits = Model::prefill(self, &mut cache, prompt)?;
        Ok((cache, logits))
    }

    fn fork(&mut self, seq: &Cache, len: usize) -> Result<Cache, ModelError> {
        Ok(seq.prefix(len))
    }

    fn decode(&mut self, batch: &mut [(&mut Cache, u32)]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.decode_batch(batch)
    }

    fn seq_len(seq: &Cache) -> usize {
        seq.len()
    }

    fn release(&mut self, _seq: Cache) {}
}

impl Backend for GpuModel {
    type Seq = GpuSeq;

    fn context_limit(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<(GpuSeq, Vec<f32>), ModelError> {
        let mut seq = self.new_seq();
        match self.forward(&mut [(&mut seq, prompt)], Logits::Last) {
            Ok(mut logits) => Ok((seq, logits.pop().ok_or(ModelError::Empty)?)),
            Err(e) => {
                self.release(seq);
                Err(e)
            }
        }
    }

    fn fork(&mut self, seq: &GpuSeq, len: usize) -> Result<GpuSeq, ModelError> {
        GpuModel::fork(self, seq, len)
    }

    fn decode(&mut self, batch: &mut [(&mut GpuSeq, u32)]) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens: Vec<[u32; 1]> = batch.iter().map(|(_, t)| [*t]).collect();
        let mut segs: Vec<(&mut GpuSeq, &[u32])> = batch
            .iter_mut()
            .zip(&tokens)
            .map(|((seq, _), t)| (&mut **seq, t.as_slice()))
            .collect();
        self.forward(&mut segs, Logits::Last)
    }

    fn seq_len(seq: &GpuSeq) -> usize {
        seq.len()
    }

    fn release(&mut self, seq: GpuSeq) {
        GpuModel::release(self, seq);
    }
}

/// Turns generated tokens into text for stop strings.
pub type Detokenize = Arc<dyn Fn(&[u32]) -> String + Send + Sync>;

struct Job {
    prompt: Vec<u32>,
    sampler: Sampler,
    stop: Stop,
    reply: tokio::sync::oneshot::Sender<Result<Generation, ModelError>>,
}

struct Running<S> {
    seq: S,
    /// The prompt and the logits after it, for a request with the same prompt to start from.
    prompt: Arc<[u32]>,
    prompt_logits: Arc<[f32]>,
    out: Vec<u32>,
    logprobs: Vec<f32>,
    /// The token sampled for the next step, and its log-probability.
    next: (u32, f32),
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
    /// Starts the worker, which owns `backend`. `max_batch` bounds the sequences decoding
    /// together.
    pub fn start<B: Backend>(backend: B, detokenize: Detokenize, max_batch: usize) -> Batcher {
        let (jobs, rx) = channel();
        let mut backend = backend;
        std::thread::Builder::new()
            .name("envsynth-batcher".into())
            .spawn(move || run(&mut backend, &detokenize, &rx, max_batch.max(1)))
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

fn run<B: Backend>(
    backend: &mut B,
    detokenize: &Detokenize,
    jobs: &Receiver<Job>,
    max_batch: usize,
) {
    let mut running: Vec<Running<B::Seq>> = Vec::new();
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
            if let Some(r) = admit(backend, job, &running) {
                running.push(r);
            }
        }
        // Every admitted sequence has a sampled token; record it and retire the finished.
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            r.out.push(r.next.0);
            r.logprobs.push(r.next.1);
            let limit = backend.context_limit();
            if let Some(finish) = stop_reason(
                &r.stop,
                &r.out,
                B::seq_len(&r.seq),
                limit,
                detokenize.as_ref(),
            ) {
                let r = running.swap_remove(i);
                backend.release(r.seq);
                let _ = r.reply.send(Ok(Generation {
                    tokens: r.out,
                    logprobs: r.logprobs,
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
        let mut batch: Vec<(&mut B::Seq, u32)> =
            running.iter_mut().map(|r| (&mut r.seq, r.next.0)).collect();
        match backend.decode(&mut batch) {
            Ok(logits) => sample_all(&mut running, &logits),
            Err(e) => {
                for r in running.drain(..) {
                    backend.release(r.seq);
                    let _ = r
                        .reply
                        .send(Err(ModelError::Batcher(format!("decode step failed: {e}"))));
                }
            }
        }
    }
}

/// Logits a sampling thread should have to itself before a step spreads its draws over the
/// cores: a thread costs tens of microseconds to start, a logit a few nanoseconds to weigh.
const SAMPLING_WORK_PER_THREAD: usize = 1 << 16;

/// Draws every running sequence's next token. A large batch spreads them over the cores while
/// the accelerator waits for them; each sequence has its own sampler, so its token does not
/// depend on how the batch was split.
fn sample_all<S: Send>(running: &mut [Running<S>], logits: &[Vec<f32>]) {
    let work: usize = logits.iter().map(Vec::len).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(work / SAMPLING_WORK_PER_THREAD)
        .min(running.len());
    if threads <= 1 {
        for (r, l) in running.iter_mut().zip(logits) {
            r.next = r.sampler.draw(l);
        }
        return;
    }
    let per = running.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (rs, ls) in running.chunks_mut(per).zip(logits.chunks(per)) {
            scope.spawn(move || {
                for (r, l) in rs.iter_mut().zip(ls) {
                    r.next = r.sampler.draw(l);
                }
            });
        }
    });
}

/// Starts a new request and samples its first token; answers at once if it cannot start. A
/// request whose prompt a running sequence began with (the k samples of one task) starts from a
/// copy of that sequence's cache and its logits, which are what prefilling the prompt would give.
fn admit<B: Backend>(
    backend: &mut B,
    job: Job,
    running: &[Running<B::Seq>],
) -> Option<Running<B::Seq>> {
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
    let started = match running.iter().find(|r| *r.prompt == *prompt) {
        Some(r) => backend
            .fork(&r.seq, prompt.len())
            .map(|seq| (seq, r.prompt.clone(), r.prompt_logits.clone())),
        None => backend
            .prefill(&prompt)
            .map(|(seq, logits)| (seq, prompt.into(), logits.into())),
    };
    match started {
        Ok((seq, prompt, prompt_logits)) => Some(Running {
            next: sampler.draw(&prompt_logits),
            seq,
            prompt,
            prompt_logits,
            out: Vec::new(),
            logprobs: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SamplingParams;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The CPU model, counting what the batcher asks of it.
    struct Counting {
        model: Arc<Model>,
        prefills: usize,
        forks: usize,
    }

    impl Backend for Counting {
        type Seq = Cache;
        fn context_limit(&self) -> usize {
            self.model.context_limit()
        }
        fn prefill(&mut self, prompt: &[u32]) -> Result<(Cache, Vec<f32>), ModelError> {
            self.prefills += 1;
            self.model.prefill(prompt)
        }
        fn fork(&mut self, seq: &Cache, len: usize) -> Result<Cache, ModelError> {
            self.forks += 1;
            self.model.fork(seq, len)
        }
        fn decode(&mut self, batch: &mut [(&mut Cache, u32)]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.model.decode(batch)
        }
        fn seq_len(seq: &Cache) -> usize {
            seq.len()
        }
        fn release(&mut self, _seq: Cache) {}
    }

    fn job(prompt: &[u32], seed: u64) -> Job {
        Job {
            prompt: prompt.to_vec(),
            sampler: Sampler::new(SamplingParams::default(), seed).expect("valid"),
            stop: Stop {
                eos: vec![],
                max_new_tokens: 8,
                strings: vec![],
            },
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn a_prompt_already_running_is_forked_not_prefilled_and_decodes_the_same() {
        let cfg = crate::config::Preset::Tiny.config();
        let tensors = crate::checkpoint::Tensors::from_named(crate::init::random_tensors(&cfg, 3));
        let model = Arc::new(Model::from_tensors(cfg, tensors).expect("builds"));
        let mut b = Counting {
            model: model.clone(),
            prefills: 0,
            forks: 0,
        };
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 500).collect();
        let mut running = Vec::new();
        let first = admit(&mut b, job(&prompt, 1), &running).expect("starts");
        running.push(first);
        // The first sequence decodes a few tokens, so its cache is longer than the prompt.
        for _ in 0..3 {
            let mut batch: Vec<(&mut Cache, u32)> =
                running.iter_mut().map(|r| (&mut r.seq, r.next.0)).collect();
            let logits = b.decode(&mut batch).expect("decodes");
            sample_all(&mut running, &logits);
        }
        let forked = admit(&mut b, job(&prompt, 2), &running).expect("starts");
        let other = admit(&mut b, job(&prompt[..30], 3), &running).expect("starts");
        assert_eq!(
            (b.prefills, b.forks),
            (2, 1),
            "the same prompt is forked, another prefilled"
        );
        assert_eq!(forked.seq.len(), prompt.len());
        // Against a fresh prefill of the same prompt with the same seed: the same first token,
        // the same cache, the same logits at every later step.
        let mut fresh = Counting {
            model,
            prefills: 0,
            forks: 0,
        };
        let alone = admit(&mut fresh, job(&prompt, 2), &[]).expect("starts");
        assert_eq!(forked.next, alone.next);
        assert_eq!(*forked.prompt_logits, *alone.prompt_logits);
        let (mut f, mut a) = (forked.seq, alone.seq);
        for t in [7u32, 11, 13] {
            let lf = b.decode(&mut [(&mut f, t)]).expect("decodes");
            let la = fresh.decode(&mut [(&mut a, t)]).expect("decodes");
            assert_eq!(lf, la);
        }
        assert_eq!(other.seq.len(), 30);
    }

    #[test]
    fn a_batch_sampled_over_threads_draws_what_each_sampler_draws_alone() {
        // 64 sequences of a 4,096-token vocabulary: enough work for every core there is.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let logits: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..4096).map(|_| rng.random_range(-6.0f32..6.0)).collect())
            .collect();
        // The threaded path is the one tested (on any machine with two cores or more).
        const { assert!(64 * 4096 >= 2 * SAMPLING_WORK_PER_THREAD) };
        let params = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 0,
        };
        let sampler = |i: u64| Sampler::new(params, 100 + i).expect("valid");
        let mut running: Vec<Running<()>> = (0..64)
            .map(|i| Running {
                seq: (),
                prompt: Arc::from([]),
                prompt_logits: Arc::from([]),
                out: Vec::new(),
                logprobs: Vec::new(),
                next: (u32::MAX, 0.0),
                sampler: sampler(i),
                stop: Stop {
                    eos: vec![],
                    max_new_tokens: 1,
                    strings: vec![],
                },
                reply: tokio::sync::oneshot::channel().0,
            })
            .collect();
        for step in 0..3 {
            sample_all(&mut running, &logits);
            let mut alone: Vec<Sampler> = (0..64).map(sampler).collect();
            for _ in 0..step {
                for (s, l) in alone.iter_mut().zip(&logits) {
                    s.sample(l);
                }
            }
            for (i, (r, l)) in running.iter().zip(&logits).enumerate() {
                assert_eq!(r.next, alone[i].draw(l), "sequence {i}, step {step}");
            }
        }
    }
}
