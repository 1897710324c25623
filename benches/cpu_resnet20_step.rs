//! One whole ResNet-20 training step on the CPU at batch 32: forward, loss, backward, SGD.
//!
//! Run with `cargo bench --bench cpu_resnet20_step`. The goal for this machine class
//! (2 cores) is recorded in docs/perf.md.

use criterion::{Criterion, criterion_group, criterion_main};
use scratchnet::models::ResNetCifar;
use scratchnet::nn::{Module, Sgd};
use scratchnet::{DType, Graph, Tensor, Var};

fn step(c: &mut Criterion) {
    // As the command line does: freed activations stay with the allocator between steps.
    scratchnet::device::cpu::keep_freed_host_memory();
    let mut model = ResNetCifar::new(3, 10, 0);
    let mut opt = Sgd::new(0.01, 0.9, 5e-4);
    let x = Tensor::randn([32, 3, 32, 32], 0.0, 1.0, DType::F32, 1);
    let labels = Tensor::from_vec([32], (0..32).map(|i| i % 10).collect::<Vec<i64>>()).expect("labels");
    let mut group = c.benchmark_group("resnet20_cpu");
    group.sample_size(10);
    group.bench_function("forward_batch32", |b| {
        b.iter(|| {
            let mut g = Graph::eval();
            model.forward(&mut g, &Var::constant(x.clone())).expect("forward")
        })
    });
    group.bench_function("train_step_batch32", |b| {
        b.iter(|| {
            let mut g = Graph::new();
            let logits = model.forward(&mut g, &Var::constant(x.clone())).expect("forward");
            let loss = g.cross_entropy(&logits, &labels).expect("loss");
            g.backward(&loss).expect("backward").accumulate_into(model.params_mut()).expect("grads");
            opt.step(model.params_mut()).expect("sgd");
        })
    });
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
