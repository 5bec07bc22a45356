//! Safetensors files in the Hugging Face layout: read by the published tensor names, convert to
//! f32 (bf16, f16, f32, and FP8 e4m3 with 128×128 block scales dequantized on load), and write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ModelError;
use crate::config::Config;
use crate::ops::Linear;

/// FP8 weight blocks: one scale per 128 × 128 tile.
pub const FP8_BLOCK: usize = 128;
/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    file: String,
}

/// Every tensor of a checkpoint, consumed by name while the model is built; whatever is left
/// at the end is a tensor the config does not explain.
pub struct Tensors {
    dir: PathBuf,
    stored: BTreeMap<String, Stored>,
    used: BTreeSet<String>,
}

fn bad(msg: String) -> ModelError {
    ModelError::Checkpoint(msg)
}

impl Tensors {
    /// Reads `model.safetensors.index.json` (sharded) or else `model.safetensors`.
    pub fn read_dir(dir: &Path) -> Result<Tensors, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index.exists() {
            let text = read(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| bad(format!("{}: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad(format!("{}: no object `weight_map`", index.display())))?;
            let mut files = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    bad(format!(
                        "{}: weight_map[{name:?}] is not a file name",
                        index.display()
                    ))
                })?;
                if file.contains('/') || file.contains("..") {
                    return Err(bad(format!(
                        "{}: weight_map[{name:?}] = {file:?} leaves the checkpoint folder",
                        index.display()
                    )));
                }
                files.insert(file.to_string());
            }
            files.into_iter().collect()
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(bad(format!(
                "{} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut stored = BTreeMap::new();
        for file in files {
            let path = dir.join(&file);
            let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| bad(format!("{}: not a safetensors file: {e}", path.display())))?;
            for (name, view) in st.tensors() {
                let t = Stored {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                    file: file.clone(),
                };
                if let Some(prev) = stored.insert(name.clone(), t) {
                    return Err(bad(format!(
                        "tensor {name} is stored twice ({} and {file})",
                        prev.file
                    )));
                }
            }
        }
        Ok(Tensors {
            dir: dir.to_path_buf(),
            stored,
            used: BTreeSet::new(),
        })
    }

    /// In-memory tensors (f32), as `random_tensors` makes them: for tests and benchmarks that
    /// need no files.
    pub fn from_named(tensors: Vec<NamedTensor>) -> Tensors {
        let stored = tensors
            .into_iter()
            .map(|t| {
                let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                let s = Stored {
                    dtype: Dtype::F32,
                    shape: t.shape,
                    bytes,
                    file: "(memory)".into(),
                };
                (t.name, s)
            })
            .collect();
        Tensors {
            dir: PathBuf::from("(memory)"),
            stored,
            used: BTreeSet::new(),
        }
    }

    fn get(&mut self, name: &str) -> Result<&Stored, ModelError> {
        let t = self
            .stored
            .get(name)
            .ok_or_else(|| bad(format!("{}: missing tensor {name}", self.dir.display())))?;
        self.used.insert(name.to_string());
        Ok(t)
    }

    /// A tensor of exactly `shape`, as f32 (norm weights, embeddings, biases, the router).
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.get(name)?;
        check_shape(name, &t.shape, shape)?;
        if t.dtype == Dtype::F8_E4M3 {
            return Err(bad(format!(
                "tensor {name} is F8_E4M3, which only projection weights may be"
            )));
        }
        to_f32(name, t.dtype, &t.bytes)
    }

    /// The projection `{prefix}.weight` of shape [out, in]; FP8 weights are multiplied by
    /// `{prefix}.weight_scale_inv`, one scale per 128 × 128 block.
    pub fn take_linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.weight");
        let (dtype, shape) = {
            let t = self.get(&name)?;
            (t.dtype, t.shape.clone())
        };
        check_shape(&name, &shape, &[out, inp])?;
        let w = if dtype == Dtype::F8_E4M3 {
            let scale_name = format!("{prefix}.weight_scale_inv");
            let grid = [out.div_ceil(FP8_BLOCK), inp.div_ceil(FP8_BLOCK)];
            let scales = self.take(&scale_name, &grid)?;
            let bytes = &self.stored[&name].bytes;
            let mut w = Vec::with_capacity(out * inp);
            for o in 0..out {
                for i in 0..inp {
                    let s = scales[(o / FP8_BLOCK) * grid[1] + i / FP8_BLOCK];
                    w.push(e4m3_to_f32(bytes[o * inp + i]) * s);
                }
            }
            w
        } else {
            let t = &self.stored[&name];
            to_f32(&name, t.dtype, &t.bytes)?
        };
        Ok(Linear { out, inp, w })
    }

    /// Refuses tensors nothing consumed, except those of the multi-token-prediction layers
    /// that follow the last layer (the forward pass does not use them).
    pub fn finish(self, cfg: &Config) -> Result<(), ModelError> {
        let mtp: Vec<String> = (cfg.num_hidden_layers
            ..cfg.num_hidden_layers + cfg.num_nextn_predict_layers)
            .map(|l| format!("model.layers.{l}."))
            .collect();
        let unknown: Vec<&String> = self
            .stored
            .keys()
            .filter(|n| !self.used.contains(*n) && !mtp.iter().any(|p| n.starts_with(p)))
            .collect();
        match unknown.as_slice() {
            [] => Ok(()),
            [one] => Err(bad(format!(
                "{}: unknown tensor {one} (not part of a deepseek_v32 model with this config.json)",
                self.dir.display()
            ))),
            [first, rest @ ..] => Err(bad(format!(
                "{}: unknown tensor {first} and {} more (not part of a deepseek_v32 model with this config.json)",
                self.dir.display(),
                rest.len()
            ))),
        }
    }
}

fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<(), ModelError> {
    if got != want {
        return Err(bad(format!(
            "tensor {name} has shape {got:?}; config.json needs {want:?}"
        )));
    }
    Ok(())
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(format!(
                "tensor {name} has dtype {other:?}; expected F32, BF16, F16 or (projections) F8_E4M3"
            )));
        }
    })
}

/// FP8 E4M3 (the "fn" variant: no infinities, 0x7F/0xFF are NaN), bias 7.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Nearest e4m3 code (ties to the even code), saturating at ±448.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // Positive finite codes 0x00..=0x7E are increasing in value.
    let (mut lo, mut hi) = (0u8, 0x7E);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if e4m3_to_f32(mid) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (a - e4m3_to_f32(lo), e4m3_to_f32(hi) - a);
    let code = if dl < dh || (dl == dh && lo % 2 == 0) {
        lo
    } else {
        hi
    };
    sign | code
}

/// How `model init` stores weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAs {
    F32,
    Bf16,
    /// Projection weights as e4m3 with power-of-two (ue8m0) block scales, everything else bf16.
    Fp8,
}

impl StoreAs {
    pub fn parse(name: &str) -> Result<StoreAs, ModelError> {
        match name {
            "f32" | "float32" => Ok(StoreAs::F32),
            "bf16" | "bfloat16" => Ok(StoreAs::Bf16),
            "fp8" => Ok(StoreAs::Fp8),
            other => Err(ModelError::Config(format!(
                "unknown dtype {other:?}; expected f32, bf16 or fp8"
            ))),
        }
    }

    pub fn torch_dtype(self) -> &'static str {
        match self {
            StoreAs::F32 => "float32",
            StoreAs::Bf16 | StoreAs::Fp8 => "bfloat16",
        }
    }
}

/// One tensor to write; `projection` marks weights that FP8 checkpoints quantize.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub projection: bool,
}

/// The safetensors bytes of `tensors`, stored as `store` says.
pub fn serialize(tensors: &[NamedTensor], store: StoreAs) -> Result<Vec<u8>, ModelError> {
    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in tensors {
        match store {
            StoreAs::F32 => encoded.push((
                t.name.clone(),
                Dtype::F32,
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )),
            StoreAs::Fp8 if t.projection => {
                let (out, inp) = (t.shape[0], t.shape[1]);
                let grid = [out.div_ceil(FP8_BLOCK), inp.div_ceil(FP8_BLOCK)];
                let mut scales = vec![0.0f32; grid[0] * grid[1]];
                for (b, s) in scales.iter_mut().enumerate() {
                    let (bo, bi) = (b / grid[1], b % grid[1]);
                    let mut amax = 0.0f32;
                    for o in bo * FP8_BLOCK..((bo + 1) * FP8_BLOCK).min(out) {
                        for i in bi * FP8_BLOCK..((bi + 1) * FP8_BLOCK).min(inp) {
                            amax = amax.max(t.data[o * inp + i].abs());
                        }
                    }
                    // ue8m0: the smallest power of two that keeps the block within ±448.
                    *s = 2f32.powi((amax.max(1e-4) / E4M3_MAX).log2().ceil() as i32);
                }
                let mut q = Vec::with_capacity(out * inp);
                for o in 0..out {
                    for i in 0..inp {
                        let s = scales[(o / FP8_BLOCK) * grid[1] + i / FP8_BLOCK];
                        q.push(f32_to_e4m3(t.data[o * inp + i] / s));
                    }
                }
                encoded.push((t.name.clone(), Dtype::F8_E4M3, t.shape.clone(), q));
                encoded.push((
                    format!("{}_scale_inv", t.name),
                    Dtype::F32,
                    grid.to_vec(),
                    scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
            StoreAs::Bf16 | StoreAs::Fp8 => encoded.push((
                t.name.clone(),
                Dtype::BF16,
                t.shape.clone(),
                t.data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            )),
        }
    }
    let mut views = Vec::with_capacity(encoded.len());
    for (name, dtype, shape, bytes) in &encoded {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| bad(format!("serialize: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_codes_round_trip_and_saturate() {
        for code in 0u8..=0x7E {
            assert_eq!(f32_to_e4m3(e4m3_to_f32(code)), code);
            assert_eq!(f32_to_e4m3(-e4m3_to_f32(code)) & 0x7F, code);
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(f32_to_e4m3(1e6), 0x7E);
        assert!(e4m3_to_f32(0x7F).is_nan());
        // 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39): ties go to the even code.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
    }
}
