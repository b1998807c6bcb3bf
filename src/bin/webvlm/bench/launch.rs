//! Launch geometry of a decode step, per dispatch family, from the recorded program itself:
//! workgroups, invocations per workgroup and weight bytes read per workgroup (the figures that
//! decide whether a real GPU is kept busy and reads each weight once), and the totals:
//! dispatches per token and per layer, weight bytes fetched per token against the model's,
//! and the activation bytes every workgroup re-reads (served from cache, reported apart).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use webvlm::backend::gpu::{Op, Pipeline};
use webvlm::backend::{Device, Program};
use webvlm::model::{Context, Decoder};

use super::Out;

/// One family's dispatches of a step.
#[derive(Default)]
struct Family {
    dispatches: usize,
    workgroups: u64,
    min_workgroups: u64,
    invocations: Option<u32>,
    weight_bytes: u64,
    activation_bytes: u64,
}

/// The family of a dispatch: its weight's name (of each member of a stack: `a+b`) without the
/// layer number (`blk.N.`, `v.blk.N.` → `v.`) and the `.weight` suffix, else the pipeline's
/// label and entry.
pub(super) fn family_name(pipeline: &Pipeline, weight: Option<&str>) -> String {
    let Some(label) = weight else {
        return match pipeline.label == pipeline.entry {
            true => pipeline.label.to_string(),
            false => format!("{} {}", pipeline.label, pipeline.entry),
        };
    };
    label
        .split('+')
        .map(|m| {
            let m = m.strip_suffix(".weight").unwrap_or(m);
            match m.split_once("blk.") {
                Some((prefix, rest)) => format!("{prefix}{}", rest.split_once('.').map_or(rest, |(_, r)| r)),
                None => m.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn families(programs: &[&Program]) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for d in programs.iter().filter_map(|p| p.as_gpu()).flat_map(|p| &p.ops).filter_map(|op| {
        if let Op::Dispatch(d) = op {
            Some(d)
        } else {
            None
        }
    }) {
        let weight = d.launch.as_ref().and_then(|l| l.weight.as_ref());
        let f = out.entry(family_name(&d.pipeline, weight.map(|w| w.label.as_str()))).or_default();
        let wgs = d.n_workgroups();
        f.min_workgroups = if f.dispatches == 0 { wgs } else { f.min_workgroups.min(wgs) };
        f.dispatches += 1;
        f.workgroups += wgs;
        f.invocations = d.launch.as_ref().map(|l| l.invocations);
        if let Some(w) = weight {
            f.weight_bytes += w.bytes;
            f.activation_bytes += w.activation_bytes * wgs;
        }
    }
    out
}

/// Prints the decode step's launch geometry and emits it as a `launch` JSON line.
pub fn report(
    dev: &Device,
    out: &Out,
    label: &str,
    dec: &Decoder,
    ctx: &mut Context,
) -> Result<Value, webvlm::backend::gpu::GpuError> {
    let n_layer = dec.cfg.n_layer as usize;
    let per_layer = ctx.decode_block_dispatches(dev, dec)? as f64 / n_layer as f64;
    let programs = ctx.decode_programs(dev, dec)?;
    let total: usize = programs.iter().map(|p| p.n_dispatches()).sum();
    let families = families(&programs);
    let (fetched, activation) = totals(&families);
    let model = dec.weight_bytes();
    out.note(&format!(
        "  launch geometry ({} shape): {total} dispatches per token, {per_layer:.1} per layer; weights fetched {:.1} MiB \
         per token of {:.1} MiB in the model ({:.2}x); activations re-read by workgroups {:.2} MiB per token",
        dev.caps().geometry.name(),
        mib(fetched),
        mib(model),
        fetched as f64 / model as f64,
        mib(activation)
    ));
    let v = json!({
        "kind": "launch", "model": label, "geometry": dev.caps().geometry.name(), "dispatches_per_token": total,
        "dispatches_per_layer": per_layer, "weight_bytes_fetched_per_token": fetched, "model_weight_bytes": model,
        "activation_bytes_per_token": activation, "families": rows(out, &families),
    });
    out.emit(v.clone());
    Ok(v)
}

/// Prints the launch geometry of one full prefill chunk and emits it as a `prefill_launch`
/// JSON line (see [`pass_report`]).
pub fn prefill_report(
    dev: &Device,
    out: &Out,
    label: &str,
    dec: &Decoder,
    ctx: &mut Context,
) -> Result<Value, webvlm::backend::gpu::GpuError> {
    let chunk = ctx.max_chunk();
    let what = format!("prefill launch geometry ({} shape, chunks of {chunk} tokens)", dev.caps().geometry.name());
    let v = json!({ "kind": "prefill_launch", "model": label, "geometry": dev.caps().geometry.name(), "chunk_tokens": chunk });
    Ok(pass_report(out, &what, &ctx.prefill_programs(dev, dec)?, chunk, v))
}

/// Prints the launch geometry of a pass over `tokens` rows (a prefill chunk, an image's
/// patches) and emits `v` with it: per family the tiled matmuls' and attention's workgroups,
/// and the weight bytes all workgroups fetch (each weight once per tile of rows), per pass and
/// per row.
pub fn pass_report(out: &Out, what: &str, programs: &[&Program], tokens: u32, mut v: Value) -> Value {
    let total: usize = programs.iter().map(|p| p.n_dispatches()).sum();
    let families = families(programs);
    let (fetched, activation) = totals(&families);
    out.note(&format!(
        "  {what}: {total} dispatches; weights fetched {:.1} MiB = {:.2} MiB per row of {tokens}; activations read by \
         workgroups {:.1} MiB",
        mib(fetched),
        mib(fetched) / tokens as f64,
        mib(activation)
    ));
    v["rows"] = json!(tokens);
    v["dispatches"] = json!(total);
    v["weight_bytes_fetched"] = json!(fetched);
    v["activation_bytes"] = json!(activation);
    v["families"] = Value::Array(rows(out, &families));
    out.emit(v.clone());
    v
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Weight and activation bytes fetched by all the families' workgroups.
fn totals(families: &BTreeMap<String, Family>) -> (u64, u64) {
    (families.values().map(|f| f.weight_bytes).sum(), families.values().map(|f| f.activation_bytes).sum())
}

/// Prints one line per family and returns their JSON rows.
fn rows(out: &Out, families: &BTreeMap<String, Family>) -> Vec<Value> {
    let mut rows = Vec::new();
    for (name, f) in families {
        let per_dispatch = f.workgroups / f.dispatches as u64;
        let bytes_per_wg = (f.weight_bytes > 0).then(|| f.weight_bytes / f.workgroups.max(1));
        out.note(&format!(
            "    {name:<30} {:4} dispatches, {:7} workgroups each (min {:6}) x {:>4} invocations{}",
            f.dispatches,
            per_dispatch,
            f.min_workgroups,
            f.invocations.map_or("?".into(), |n| n.to_string()),
            bytes_per_wg.map_or(String::new(), |b| format!(", {b} weight bytes per workgroup"))
        ));
        rows.push(json!({
            "family": name, "dispatches": f.dispatches, "workgroups_per_dispatch": per_dispatch,
            "min_workgroups": f.min_workgroups, "invocations_per_workgroup": f.invocations,
            "weight_bytes_per_workgroup": bytes_per_wg, "weight_bytes": f.weight_bytes,
            "activation_bytes": f.activation_bytes,
        }));
    }
    rows
}
