//! CPU convolution at ResNet-20 layer shapes, batch 32: forward, data gradient, filter gradient.
//!
//! Run with `cargo bench --bench cpu_conv`. Throughput is reported in elements of the output
//! so criterion prints a rate; the GFLOP/s figure is `2 · macs / time` (see docs/perf.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use scratchnet::ops::ExecOptions;
use scratchnet::ops::conv2d::{self, Conv2dParams, ConvGeometry};
use scratchnet::{DType, Tensor};

fn bench_layer(c: &mut Criterion, name: &str, x: [usize; 4], w: [usize; 4], p: Conv2dParams) {
    let xt = Tensor::randn(x, 0.0, 1.0, DType::F32, 1);
    let wt = Tensor::randn(w, 0.0, 0.1, DType::F32, 2);
    let g = ConvGeometry::new(xt.shape(), wt.shape(), p).expect("valid shape");
    let dy = Tensor::randn(g.out_shape(), 0.0, 1.0, DType::F32, 3);
    let mut group = c.benchmark_group(format!("conv2d/{name}"));
    group.throughput(Throughput::Elements(2 * g.macs()));
    group.sample_size(20);
    group.bench_function("forward", |b| {
        b.iter(|| conv2d::forward(&xt, &wt, None, p, &ExecOptions::default()).expect("forward"))
    });
    group.bench_function("backward_data", |b| {
        b.iter(|| conv2d::backward_data(&dy, &wt, xt.shape(), p, &ExecOptions::default()).expect("data"))
    });
    group.bench_function("backward_filter", |b| {
        b.iter(|| conv2d::backward_filter(&dy, &xt, wt.shape(), p, &ExecOptions::default()).expect("filter"))
    });
    group.finish();
}

fn resnet20_layers(c: &mut Criterion) {
    let p = Conv2dParams::default().padding(1);
    bench_layer(c, "resnet20_layer1_16x32x32", [32, 16, 32, 32], [16, 16, 3, 3], p);
    bench_layer(c, "resnet20_layer3_64x8x8", [32, 64, 8, 8], [64, 64, 3, 3], p);
}

criterion_group!(benches, resnet20_layers);
criterion_main!(benches);
