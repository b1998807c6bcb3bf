//! Kernels and the typed pipeline cache.
//!
//! A kernel is a WGSL source (one file per family, possibly prefixed by shared parts such as
//! a quant-format decoder, and always preceded by [`COMMON_WGSL`]), an entry point, its
//! binding list and override constants. Bind group layouts are explicit (built from the
//! binding list), so entry points of one family may use different subsets of the declared
//! bindings. Every pipeline is compiled once per device.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use super::{GpuError, Result};

/// Helpers shared by the kernel families (`shaders/common.wgsl`: the linear index of a grid
/// folded by [`grid_1d`](super::grid_1d), the Cody-Waite angle reduction): part of every
/// module, right before the family's own source (WGSL module-scope declarations may be used
/// before they appear, and unused ones cost nothing).
pub const COMMON_WGSL: &str = include_str!("../../../shaders/common.wgsl");

/// How a kernel uses one binding of group 0 (binding index = position in the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// Everything that identifies a compute pipeline: it is also the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Label for errors and debuggers.
    pub label: &'static str,
    /// WGSL parts concatenated in order (e.g. `[QUANT_WGSL, COMMON_WGSL, MATVEC]`); a part
    /// with an `enable` directive must come first. A generated part (a declaration sized
    /// per launch) is owned.
    pub sources: Vec<Cow<'static, str>>,
    pub entry: &'static str,
    pub bindings: &'static [Access],
    /// Pipeline-overridable constants (workgroup sizes, tile shapes), as integers.
    pub constants: Vec<(&'static str, i64)>,
}

impl KernelSpec {
    /// The family source `source`, preceded by [`COMMON_WGSL`].
    pub fn new(label: &'static str, source: &'static str, entry: &'static str, bindings: &'static [Access]) -> Self {
        KernelSpec { label, sources: vec![COMMON_WGSL.into(), source.into()], entry, bindings, constants: Vec::new() }
    }

    /// Prepends a source part (a shared prelude such as a quant decoder or `enable f16;`):
    /// the last part prepended comes first in the module.
    pub fn with_prefix(mut self, part: impl Into<Cow<'static, str>>) -> Self {
        self.sources.insert(0, part.into());
        self
    }

    /// Sets an override constant.
    pub fn with_constant(mut self, name: &'static str, value: i64) -> Self {
        self.constants.retain(|(n, _)| *n != name);
        self.constants.push((name, value));
        self
    }
}

/// A compiled pipeline with the layout its bind groups must use.
pub struct Pipeline {
    pub label: &'static str,
    pub entry: &'static str,
    pub compute: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: &'static [Access],
}

#[derive(Default)]
pub(super) struct PipelineCache {
    modules: HashMap<Vec<Cow<'static, str>>, wgpu::ShaderModule>,
    layouts: HashMap<&'static [Access], (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<KernelSpec, Rc<Pipeline>>,
}

impl PipelineCache {
    /// The pipeline for `spec`, compiled on `device` on first use; `take_error` returns the
    /// first device error raised since the last check (a shader that did not compile).
    pub(super) fn get(
        &mut self,
        device: &wgpu::Device,
        spec: &KernelSpec,
        take_error: impl FnOnce() -> Option<GpuError>,
    ) -> Result<Rc<Pipeline>> {
        if let Some(p) = self.pipelines.get(spec) {
            return Ok(p.clone());
        }
        let module = self
            .modules
            .entry(spec.sources.clone())
            .or_insert_with(|| {
                let code: String = spec.sources.concat();
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(spec.label),
                    source: wgpu::ShaderSource::Wgsl(code.into()),
                })
            })
            .clone();
        let (bind_layout, pipeline_layout) =
            self.layouts.entry(spec.bindings).or_insert_with(|| layouts_for(device, spec.bindings)).clone();
        let constants: Vec<(&str, f64)> = spec.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let compute = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = take_error() {
            return Err(GpuError::Pipeline { label: format!("{}::{}", spec.label, spec.entry), message: e.to_string() });
        }
        let pipeline =
            Rc::new(Pipeline { label: spec.label, entry: spec.entry, compute, layout: bind_layout, bindings: spec.bindings });
        self.pipelines.insert(spec.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// How many compiled shader modules have `text` in their source.
    pub(super) fn modules_containing(&self, text: &str) -> usize {
        self.modules.keys().filter(|sources| sources.iter().any(|part| part.contains(text))).count()
    }
}

fn layouts_for(device: &wgpu::Device, bindings: &[Access]) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .enumerate()
        .map(|(i, access)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match access {
                    Access::Uniform => wgpu::BufferBindingType::Uniform,
                    Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let bind = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&bind)],
        immediate_size: 0,
    });
    (bind, layout)
}
