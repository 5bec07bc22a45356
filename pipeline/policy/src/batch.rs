//! Continuous batching: one worker thread owns the model's compute. Requests join the running
//! batch as they arrive (prefilled on admission), every unfinished sequence decodes one token per
//! step in a single batched forward call, and each finished sequence is answered and leaves at
//! once. A request's tokens do not depend on what else is in the batch: every row of a batched
//! forward is computed exactly as it would be alone, and each request has its own sampler.
//!
//! A request may ask to keep its sequence when it finishes ([`Batcher::turn`]): the cache then
//! stays on the worker, held by a [`Kept`] handle, until a request whose prompt continues it
//! resumes it (prefilling only the new tokens) or the handle is dropped. Whether a request
//! resumes depends only on the handle it brings, never on timing, so a rollout's tokens stay
//! the same from run to run.

use std::collections::BTreeMap;

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
    /// `tokens` appended to `seq` in one call (a prefill that continues its cache); the logits
    /// after the last.
    fn extend(&mut self, seq: &mut Self::Seq, tokens: &[u32]) -> Result<Vec<f32>, ModelError>;
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

    fn extend(&mut self, seq: &mut Cache, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Model::prefill(self, seq, tokens)
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

    fn extend(&mut self, seq: &mut GpuSeq, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.forward(&mut [(seq, tokens)], Logits::Last)?
            .pop()
            .ok_or(ModelError::Empty)
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

/// What the worker is sent.
enum Msg {
    Job(Box<Job>),
    /// A kept sequence's handle was dropped: its cache goes back.
    Release(u64),
}

type Answer = Result<(Generation, Option<Kept>), ModelError>;

struct Job {
    prompt: Vec<u32>,
    sampler: Sampler,
    stop: Stop,
    /// Where a kept sequence's handle sends its release; `None`: do not keep the sequence.
    keep: Option<Sender<Msg>>,
    /// The kept sequence this request continues, held until the request is admitted.
    resume: Option<Arc<Kept>>,
    reply: tokio::sync::oneshot::Sender<Answer>,
}

/// A finished sequence the worker keeps for the request that continues it. Dropping the handle
/// gives its cache back.
pub struct Kept {
    /// The worker that holds it.
    batcher: u64,
    id: u64,
    release: Sender<Msg>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = self.release.send(Msg::Release(self.id));
    }
}

/// A kept sequence on the worker: its cache and the tokens it holds.
struct Held<S> {
    seq: S,
    tokens: Vec<u32>,
}

struct Running<S> {
    seq: S,
    /// The prompt and the logits after it, for a request with the same prompt to start from.
    prompt: Arc<[u32]>,
    prompt_logits: Arc<[f32]>,
    /// Whether its prompt's cache is what a prefill of the prompt gives, so that a request with
    /// the same prompt may fork it (not so for a resumed sequence).
    forkable: bool,
    keep: Option<Sender<Msg>>,
    out: Vec<u32>,
    logprobs: Vec<f32>,
    /// The token sampled for the next step, and its log-probability.
    next: (u32, f32),
    sampler: Sampler,
    stop: Stop,
    reply: tokio::sync::oneshot::Sender<Answer>,
}

/// The handle requests are sent through; dropping every handle (and every [`Kept`]) stops the
/// worker.
#[derive(Clone)]
pub struct Batcher {
    jobs: Sender<Msg>,
    id: u64,
}

/// Tells batchers apart, so a handle is only ever resumed by the worker that kept it.
static BATCHERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Batcher {
    /// Starts the worker, which owns `backend`. `max_batch` bounds the sequences decoding
    /// together.
    pub fn start<B: Backend>(backend: B, detokenize: Detokenize, max_batch: usize) -> Batcher {
        let (jobs, rx) = channel();
        let id = BATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut backend = backend;
        std::thread::Builder::new()
            .name("envsynth-batcher".into())
            .spawn(move || run(&mut backend, &detokenize, &rx, max_batch.max(1), id))
            .expect("the batcher thread starts");
        Batcher { jobs, id }
    }

    /// Queues a generation; the answer arrives when the sequence finishes.
    pub async fn generate(
        &self,
        prompt: Vec<u32>,
        sampler: Sampler,
        stop: Stop,
    ) -> Result<Generation, ModelError> {
        Ok(self.send(prompt, sampler, stop, false, None).await?.0)
    }

    /// One turn of a conversation: like [`Batcher::generate`], but the finished sequence is
    /// kept for the next turn, which passes the returned handle as `resume`. A prompt that
    /// begins with every token the kept sequence holds (its prompt and its completion but the
    /// last token) continues its cache: only the rest is prefilled. A handle from another
    /// batcher, or a prompt that does not continue it, is prefilled from scratch.
    pub async fn turn(
        &self,
        prompt: Vec<u32>,
        sampler: Sampler,
        stop: Stop,
        resume: Option<Arc<Kept>>,
    ) -> Result<(Generation, Kept), ModelError> {
        let resume = resume.filter(|k| k.batcher == self.id);
        let (g, kept) = self.send(prompt, sampler, stop, true, resume).await?;
        let kept = kept.ok_or_else(|| ModelError::Batcher("the sequence was not kept".into()))?;
        Ok((g, kept))
    }

    async fn send(
        &self,
        prompt: Vec<u32>,
        sampler: Sampler,
        stop: Stop,
        keep: bool,
        resume: Option<Arc<Kept>>,
    ) -> Answer {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Msg::Job(Box::new(Job {
                prompt,
                sampler,
                stop,
                keep: keep.then(|| self.jobs.clone()),
                resume,
                reply,
            })))
            .map_err(|_| ModelError::Batcher("the batcher has stopped".into()))?;
        answer
            .await
            .map_err(|_| ModelError::Batcher("the batcher dropped the request".into()))?
    }
}

fn run<B: Backend>(
    backend: &mut B,
    detokenize: &Detokenize,
    jobs: &Receiver<Msg>,
    max_batch: usize,
    batcher: u64,
) {
    let mut running: Vec<Running<B::Seq>> = Vec::new();
    let mut kept: BTreeMap<u64, Held<B::Seq>> = BTreeMap::new();
    let mut next_kept = 0u64;
    loop {
        // Admit: wait when idle, else take whatever is queued, up to the batch bound; give back
        // the kept sequences whose handles were dropped.
        while running.len() < max_batch {
            let msg = if running.is_empty() {
                match jobs.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            match msg {
                Msg::Release(id) => {
                    if let Some(h) = kept.remove(&id) {
                        backend.release(h.seq);
                    }
                }
                Msg::Job(job) => {
                    if let Some(r) = admit(backend, *job, &running, &mut kept) {
                        running.push(r);
                    }
                }
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
                let handle = match r.keep {
                    Some(release) => {
                        // The cache holds the prompt and every generated token but the last.
                        let mut tokens = r.prompt.to_vec();
                        tokens.extend_from_slice(&r.out[..r.out.len() - 1]);
                        debug_assert_eq!(tokens.len(), B::seq_len(&r.seq));
                        let id = next_kept;
                        next_kept += 1;
                        kept.insert(id, Held { seq: r.seq, tokens });
                        Some(Kept {
                            batcher,
                            id,
                            release,
                        })
                    }
                    None => {
                        backend.release(r.seq);
                        None
                    }
                };
                // A requester that has gone drops the handle with the answer: the kept
                // sequence is released.
                let _ = r.reply.send(Ok((
                    Generation {
                        tokens: r.out,
                        logprobs: r.logprobs,
                        finish,
                    },
                    handle,
                )));
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
/// request that resumes a kept sequence its prompt continues prefills only the new tokens onto
/// that cache. Otherwise, a request whose prompt a running sequence began with (the k samples of
/// one task) starts from a copy of that sequence's cache and its logits, which are what
/// prefilling the prompt would give.
fn admit<B: Backend>(
    backend: &mut B,
    job: Job,
    running: &[Running<B::Seq>],
    kept: &mut BTreeMap<u64, Held<B::Seq>>,
) -> Option<Running<B::Seq>> {
    let Job {
        prompt,
        mut sampler,
        stop,
        keep,
        resume,
        reply,
    } = job;
    if prompt.is_empty() {
        let _ = reply.send(Err(ModelError::Empty));
        return None;
    }
    let started = match resume.as_ref().and_then(|k| kept.remove(&k.id)) {
        Some(h) if prompt.len() > h.tokens.len() && prompt.starts_with(&h.tokens) => {
            let mut seq = h.seq;
            match backend.extend(&mut seq, &prompt[h.tokens.len()..]) {
                Ok(logits) => Ok((seq, prompt.into(), logits.into(), false)),
                Err(e) => {
                    backend.release(seq);
                    Err(e)
                }
            }
        }
        other => {
            if let Some(h) = other {
                // Not continued: the kept cache is of no use to anyone now.
                backend.release(h.seq);
            }
            match running.iter().find(|r| r.forkable && *r.prompt == *prompt) {
                Some(r) => backend
                    .fork(&r.seq, prompt.len())
                    .map(|seq| (seq, r.prompt.clone(), r.prompt_logits.clone(), true)),
                None => backend
                    .prefill(&prompt)
                    .map(|(seq, logits)| (seq, prompt.into(), logits.into(), true)),
            }
        }
    };
    // The handle's release (if this was its last holder) now finds nothing to give back.
    drop(resume);
    match started {
        Ok((seq, prompt, prompt_logits, forkable)) => Some(Running {
            next: sampler.draw(&prompt_logits),
            seq,
            prompt,
            prompt_logits,
            forkable,
            keep,
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
    /// What a [`Counting`] backend was asked to compute.
    #[derive(Clone, Copy, Debug, Default)]
    struct Counts {
        prefills: usize,
        /// Tokens prefilled from scratch.
        prefilled: usize,
        forks: usize,
        /// Tokens appended to kept sequences.
        extended: usize,
        released: usize,
    }

    /// The CPU model, counting what it is asked (shared, so the count can be read while the
    /// batcher's worker owns the backend).
    struct Counting {
        model: Arc<Model>,
        counts: Arc<std::sync::Mutex<Counts>>,
    }

    impl Counting {
        fn new(model: Arc<Model>) -> Counting {
            Counting {
                model,
                counts: Arc::default(),
            }
        }
        fn counts(&self) -> Counts {
            *self.counts.lock().expect("counts")
        }
        fn count(&self, f: impl FnOnce(&mut Counts)) {
            f(&mut self.counts.lock().expect("counts"));
        }
    }

    impl Backend for Counting {
        type Seq = Cache;
        fn context_limit(&self) -> usize {
            self.model.context_limit()
        }
        fn prefill(&mut self, prompt: &[u32]) -> Result<(Cache, Vec<f32>), ModelError> {
            self.count(|c| {
                c.prefills += 1;
                c.prefilled += prompt.len();
            });
            self.model.prefill(prompt)
        }
        fn fork(&mut self, seq: &Cache, len: usize) -> Result<Cache, ModelError> {
            self.count(|c| c.forks += 1);
            self.model.fork(seq, len)
        }
        fn decode(&mut self, batch: &mut [(&mut Cache, u32)]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.model.decode(batch)
        }
        fn extend(&mut self, seq: &mut Cache, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
            self.count(|c| c.extended += tokens.len());
            self.model.extend(seq, tokens)
        }
        fn seq_len(seq: &Cache) -> usize {
            seq.len()
        }
        fn release(&mut self, _seq: Cache) {
            self.count(|c| c.released += 1);
        }
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
            keep: None,
            resume: None,
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn a_prompt_already_running_is_forked_not_prefilled_and_decodes_the_same() {
        let cfg = crate::config::Preset::Tiny.config();
        let tensors = crate::checkpoint::Tensors::from_named(crate::init::random_tensors(&cfg, 3));
        let model = Arc::new(Model::from_tensors(cfg, tensors).expect("builds"));
        let mut b = Counting::new(model.clone());
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 500).collect();
        let mut running = Vec::new();
        let first = admit(&mut b, job(&prompt, 1), &running, &mut BTreeMap::new()).expect("starts");
        running.push(first);
        // The first sequence decodes a few tokens, so its cache is longer than the prompt.
        for _ in 0..3 {
            let mut batch: Vec<(&mut Cache, u32)> =
                running.iter_mut().map(|r| (&mut r.seq, r.next.0)).collect();
            let logits = b.decode(&mut batch).expect("decodes");
            sample_all(&mut running, &logits);
        }
        let forked =
            admit(&mut b, job(&prompt, 2), &running, &mut BTreeMap::new()).expect("starts");
        let other = admit(
            &mut b,
            job(&prompt[..30], 3),
            &running,
            &mut BTreeMap::new(),
        )
        .expect("starts");
        assert_eq!(
            (b.counts().prefills, b.counts().forks),
            (2, 1),
            "the same prompt is forked, another prefilled"
        );
        assert_eq!(forked.seq.len(), prompt.len());
        // Against a fresh prefill of the same prompt with the same seed: the same first token,
        // the same cache, the same logits at every later step.
        let mut fresh = Counting::new(model);
        let alone = admit(&mut fresh, job(&prompt, 2), &[], &mut BTreeMap::new()).expect("starts");
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

    /// A turn that resumes the kept sequence of the turn before prefills only its new tokens
    /// onto that cache, and generates what the same calls on the model give; a prompt that does
    /// not continue the kept tokens is prefilled whole; dropping a handle gives the cache back.
    #[test]
    fn a_turn_that_resumes_a_kept_sequence_prefills_only_its_new_tokens() {
        let cfg = crate::config::Preset::Tiny.config();
        let tensors = crate::checkpoint::Tensors::from_named(crate::init::random_tensors(&cfg, 4));
        let model = Arc::new(Model::from_tensors(cfg, tensors).expect("builds"));
        let backend = Counting::new(model.clone());
        let counts = backend.counts.clone();
        let batcher = Batcher::start(backend, Arc::new(|_: &[u32]| String::new()), 4);
        // Tokens prefilled from scratch, tokens appended to kept caches, sequences given back.
        let tally = || {
            let c = *counts.lock().expect("counts");
            [c.prefilled, c.extended, c.released]
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let sampler = |seed| Sampler::new(SamplingParams::default(), seed).expect("valid");
        let stop = Stop {
            eos: vec![],
            max_new_tokens: 5,
            strings: vec![],
        };
        let p1: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 500).collect();
        let (g1, k1) = rt
            .block_on(batcher.turn(p1.clone(), sampler(1), stop.clone(), None))
            .expect("turn 1");
        assert_eq!(tally(), [40, 0, 0], "the first turn is prefilled and kept");
        let mut p2 = p1.clone();
        p2.extend(&g1.tokens);
        p2.extend([9, 8, 7]);
        let k1 = Arc::new(k1);
        let (g2, k2) = rt
            .block_on(batcher.turn(p2.clone(), sampler(2), stop.clone(), Some(k1.clone())))
            .expect("turn 2");
        assert_eq!(
            tally(),
            [40, 4, 0],
            "the reply's last token and the three new ones are appended to the kept cache"
        );
        // The same calls on the model by hand.
        let mut cache = Cache::new(&model);
        Model::prefill(&model, &mut cache, &p1).expect("prefill");
        for &t in &g1.tokens[..4] {
            Model::decode(&model, &mut cache, t).expect("decode");
        }
        let mut logits = Model::prefill(&model, &mut cache, &p2[44..]).expect("extend");
        let mut s = sampler(2);
        let mut want = Vec::new();
        loop {
            let (t, l) = s.draw(&logits);
            want.push((t, l));
            if want.len() == 5 {
                break;
            }
            logits = Model::decode(&model, &mut cache, t).expect("decode");
        }
        let got: Vec<(u32, f32)> = g2.tokens.iter().copied().zip(g2.logprobs).collect();
        assert_eq!(got, want);

        // A prompt that does not continue the kept tokens: prefilled whole, the kept cache
        // given back at once.
        let p3: Vec<u32> = (0..30).map(|i| (i * 11 + 3) % 500).collect();
        let (_, k3) = rt
            .block_on(batcher.turn(p3, sampler(3), stop.clone(), Some(Arc::new(k2))))
            .expect("turn 3");
        assert_eq!(tally(), [70, 4, 1]);
        // Dropping the last handles gives their caches back (the worker takes the releases
        // when it next looks at its queue). k1's sequence went on as k2's, so it has nothing
        // left to give.
        drop((k1, k3));
        for _ in 0..200 {
            if tally()[2] == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(tally(), [70, 4, 2]);
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
                forkable: true,
                keep: None,
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
