//! The generator stages as one typed chain: sample parameters → build world → compose the task →
//! plant a solution → certify. Each stage gets its own deterministic RNG stream, so changing how
//! many draws one stage makes does not shift the others. Rendering and assembling the task
//! record stay with the environment, which owns its templates.

use rand_chacha::ChaCha8Rng;

use crate::certify::{Certificate, Mutant, certify};
use crate::env::{Rejection, TaskRequest};
use crate::seed::task_rng;
use crate::verdict::Verdict;

/// An environment family's generator, stage by stage. Every method is a pure function of its
/// arguments.
pub trait Stages {
    /// Sampled difficulty and trip-shape parameters.
    type Params;
    /// The world the task's tools run against.
    type World;
    /// The composed task: what is asked, with its constraints.
    type Query;
    /// A solution in the submission format.
    type Solution;

    /// Environment id and version: they key the RNG streams.
    fn key(&self) -> (&str, &str);
    fn sample_params(
        &self,
        rng: &mut ChaCha8Rng,
        request: &TaskRequest,
    ) -> Result<Self::Params, Rejection>;
    fn build_world(&self, rng: &mut ChaCha8Rng, params: &Self::Params) -> Self::World;
    fn compose(
        &self,
        rng: &mut ChaCha8Rng,
        params: &Self::Params,
        world: &Self::World,
    ) -> Self::Query;
    /// Plant a solution; may finish the query from it (a budget set from the solution's cost).
    fn plant(
        &self,
        params: &Self::Params,
        world: &Self::World,
        query: &mut Self::Query,
    ) -> Result<Self::Solution, Rejection>;
    /// The ids of every check this query's verdicts carry.
    fn check_ids(&self, query: &Self::Query) -> Vec<&'static str>;
    fn verify(
        &self,
        world: &Self::World,
        query: &Self::Query,
        solution: &Self::Solution,
    ) -> Verdict;
    /// One mutant per check, each breaking exactly that check's constraint where possible.
    fn mutants(
        &self,
        world: &Self::World,
        query: &Self::Query,
        solution: &Self::Solution,
    ) -> Vec<Mutant<Self::Solution>>;
}

/// The products of the stages up to planting.
pub struct Draft<S: Stages + ?Sized> {
    pub params: S::Params,
    pub world: S::World,
    pub query: S::Query,
    pub solution: S::Solution,
}

/// Run sample → world → compose → plant for one attempt.
pub fn draft<S: Stages + ?Sized>(
    stages: &S,
    request: &TaskRequest,
    attempt: u32,
) -> Result<Draft<S>, Rejection> {
    let (id, version) = stages.key();
    let rng = |stream: &str| task_rng(id, version, request.seed, request.index, attempt, stream);
    let params = stages.sample_params(&mut rng("params"), request)?;
    let world = stages.build_world(&mut rng("world"), &params);
    let mut query = stages.compose(&mut rng("compose"), &params, &world);
    let solution = stages.plant(&params, &world, &mut query)?;
    Ok(Draft {
        params,
        world,
        query,
        solution,
    })
}

/// Certify a draft: the planted solution passes and every check's mutant fails that check.
pub fn certify_draft<S: Stages + ?Sized>(
    stages: &S,
    d: &Draft<S>,
) -> Result<Certificate, Rejection> {
    let mutants = stages.mutants(&d.world, &d.query, &d.solution);
    certify(
        |s| stages.verify(&d.world, &d.query, s),
        &d.solution,
        &mutants,
        &stages.check_ids(&d.query),
    )
}
