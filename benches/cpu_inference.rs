//! Eval-mode inference on the CPU at the sizes of issue 5's CPU goals: ResNet-18, ResNet-50
//! and DenseNet-121 on 64×64 images and AlexNet on 227×227, batch 8. The reference point is
//! ONNX Runtime on the same 2-core machine (22 / 46 / 30 / 152 ms; docs/perf.md).
//!
//! Run with `cargo bench --bench cpu_inference`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use scratchnet::models;
use scratchnet::{DType, Graph, Tensor, Var};

fn inference(c: &mut Criterion) {
    // As the command line does: freed activations stay with the allocator between steps.
    scratchnet::device::cpu::keep_freed_host_memory();
    let mut group = c.benchmark_group("cpu_inference_batch8");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for (name, side) in [("resnet18", 64), ("resnet50", 64), ("densenet121", 64), ("alexnet", 227)] {
        let mut model = models::build(name, 1000, 0).expect("model");
        let x = Tensor::randn([8, 3, side, side], 0.0, 1.0, DType::F32, 1);
        group.bench_function(format!("{name}_{side}x{side}"), |b| {
            b.iter(|| {
                let mut g = Graph::eval();
                model.forward(&mut g, &Var::constant(x.clone())).expect("forward")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);
