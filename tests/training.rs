//! Learning works: a small network fits a fixed batch, and ResNet-20 trains on the
//! synthetic data set.

use scratchnet::data::synthetic;
use scratchnet::nn::init::Init;
use scratchnet::nn::{BatchNorm2d, Conv2d, Linear, Module, Sgd};
use scratchnet::ops::conv2d::Conv2dParams;
use scratchnet::ops::pool::Pool2dParams;
use scratchnet::{Graph, Result, Tensor, Var};

struct TinyNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    fc: Linear,
}

impl TinyNet {
    fn new() -> TinyNet {
        let p = Conv2dParams::default().padding(1);
        TinyNet {
            conv1: Conv2d::new("conv1", 3, 8, 3, p, false, Init::KaimingNormalFanOut, 1),
            bn1: BatchNorm2d::new("bn1", 8),
            conv2: Conv2d::new("conv2", 8, 16, 3, p.stride(2), true, Init::Default, 2),
            fc: Linear::new("fc", 16, 10, true, 3),
        }
    }
}

impl Module for TinyNet {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(g, x)?;
        let h = self.bn1.forward(g, &h)?;
        let h = g.relu(&h)?;
        let h = g.max_pool2d(&h, Pool2dParams::new(2, 2))?;
        let h = self.conv2.forward(g, &h)?;
        let h = g.relu(&h)?;
        let h = g.global_avg_pool(&h)?;
        let h = g.flatten(&h)?;
        self.fc.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.conv1, &self.bn1, &self.conv2, &self.fc]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.fc]
    }
}

fn step(model: &mut TinyNet, opt: &mut Sgd, x: &Tensor, y: &Tensor) -> f64 {
    let mut g = Graph::new();
    let logits = model.forward(&mut g, &Var::constant(x.clone())).unwrap();
    let loss = g.cross_entropy(&logits, y).unwrap();
    let value = loss.value().item().unwrap();
    g.backward(&loss).unwrap().accumulate_into(model.params_mut()).unwrap();
    opt.step(model.params_mut()).unwrap();
    value
}

#[test]
fn a_tiny_conv_net_fits_a_fixed_batch() {
    let (data, _) = synthetic::generate(20, 0, 5);
    let (x, y) = scratchnet::data::batch(&data, &(0..20).collect::<Vec<_>>(), None).unwrap();
    let mut model = TinyNet::new();
    let mut opt = Sgd::new(0.05, 0.9, 0.0);
    let first = step(&mut model, &mut opt, &x, &y);
    let mut last = first;
    for _ in 0..60 {
        last = step(&mut model, &mut opt, &x, &y);
    }
    assert!(first > 1.5, "an untrained net should be near ln 10 = 2.3, got {first}");
    assert!(last < 0.25 * first, "loss went from {first} to {last}");
    // The running statistics moved away from their initial (0, 1).
    assert!(model.bn1.running_mean.to_f64_vec().unwrap().iter().any(|v| v.abs() > 1e-3));
    assert_eq!(model.bn1.batches_tracked(), 61);
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let run = || {
        let (data, _) = synthetic::generate(16, 0, 6);
        let (x, y) = scratchnet::data::batch(&data, &(0..16).collect::<Vec<_>>(), None).unwrap();
        let mut model = TinyNet::new();
        let mut opt = Sgd::new(0.05, 0.9, 1e-4);
        (0..3).map(|_| step(&mut model, &mut opt, &x, &y)).collect::<Vec<f64>>()
    };
    assert_eq!(run(), run(), "two runs from one seed must agree to the bit");
}

#[test]
fn the_training_loop_lowers_the_loss_of_resnet20() {
    use scratchnet::train::{TrainOptions, train};
    let o = TrainOptions {
        synthetic_size: (320, 64),
        epochs: 4,
        batch_size: 32,
        lr: 0.1,
        augment: false,
        ..TrainOptions::default()
    };
    let mut steps = 0;
    let (model, reports) = train(&o, |p| {
        if let scratchnet::train::Progress::Step { .. } = p {
            steps += 1
        }
    })
    .unwrap();
    assert_eq!(steps, 40);
    assert_eq!(reports.len(), 4);
    assert_eq!(model.num_params(), 272_474);
    let (first, last) = (reports[0].train_loss, reports[3].train_loss);
    assert!(last < 0.9 * first, "training loss went from {first} to {last}");
    assert!(
        reports
            .iter()
            .all(|r| r.test_loss.is_some_and(f64::is_finite)
                && r.test_accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)))
    );
}

/// `--cuda-graph` on the emulator: two ordinary steps, one captured, the rest replays. Every
/// step's loss and the final weights and running statistics equal those of ordinary steps to
/// the bit (the same kernels, in the same order, on the same data), while the learning rate
/// follows its schedule through device memory.
#[test]
fn a_captured_training_step_replays_to_the_same_weights() {
    use scratchnet::data::{DataSource, npy};
    use scratchnet::train::{Progress, TrainOptions, train};
    let dir = std::env::temp_dir().join(format!("scratchnet-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (n, side) = (30, 8);
    let x: Vec<f32> = (0..n * 3 * side * side).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    std::fs::write(&xp, npy::encode_f32(&[n, 3, side, side], &x)).unwrap();
    std::fs::write(&yp, npy::encode_i64(&[n], &y)).unwrap();
    let run = |cuda_graph: bool| {
        let o = TrainOptions {
            data: DataSource::Npy(xp.clone(), yp.clone()),
            device: scratchnet::Device::Emu(0),
            // 27 training images: steps of 4, and a last one of 3 that runs as usual.
            epochs: 2,
            batch_size: 4,
            lr: 0.05,
            augment: false,
            num_classes: Some(4),
            cuda_graph,
            ..TrainOptions::default()
        };
        let mut losses = Vec::new();
        let (model, _) = train(&o, |p| {
            if let Progress::Step(s) = p {
                losses.push((s.loss, s.lr));
            }
        })
        .unwrap();
        let weights: Vec<Vec<f32>> = model.params().iter().map(|p| p.value.to_vec::<f32>().unwrap()).collect();
        (losses, weights)
    };
    let (plain_losses, plain_weights) = run(false);
    let (graph_losses, graph_weights) = run(true);
    assert_eq!(plain_losses.len(), 14);
    assert_eq!(graph_losses, plain_losses, "every step's loss (and learning rate)");
    assert!(plain_losses.windows(2).any(|w| w[0].1 != w[1].1), "the schedule changes the rate");
    assert!(graph_weights == plain_weights, "the weights after training");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A step with dropout captured as a graph: each replay reads the layer's next seed from
/// device memory (written before the replay, drawn from the layer's generator as an ordinary
/// step would draw it), so replays give exactly the losses and weights of ordinary steps.
#[test]
fn a_captured_step_with_dropout_draws_fresh_masks_like_ordinary_steps() {
    use scratchnet::nn::Dropout;
    use scratchnet::train::GraphStep;
    struct DropNet {
        conv: Conv2d,
        bn: BatchNorm2d,
        drop: Dropout,
        fc: Linear,
    }
    impl Module for DropNet {
        fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
            let h = self.conv.forward(g, x)?;
            let h = self.bn.forward_relu(g, &h)?;
            let h = g.global_avg_pool(&h)?;
            let h = g.flatten(&h)?;
            let h = self.drop.forward(g, &h)?;
            self.fc.forward(g, &h)
        }
        fn children(&self) -> Vec<&dyn Module> {
            vec![&self.conv, &self.bn, &self.drop, &self.fc]
        }
        fn children_mut(&mut self) -> Vec<&mut dyn Module> {
            vec![&mut self.conv, &mut self.bn, &mut self.drop, &mut self.fc]
        }
    }
    let device = scratchnet::Device::Emu(0);
    let build = || {
        let p = Conv2dParams::default().padding(1);
        let mut m = DropNet {
            conv: Conv2d::new("conv", 3, 16, 3, p, false, Init::KaimingNormalFanOut, 1),
            bn: BatchNorm2d::new("bn", 16),
            drop: Dropout::new("drop", 0.5, 9),
            fc: Linear::new("fc", 16, 4, true, 3),
        };
        m.to_device(device).unwrap();
        m
    };
    let x = Tensor::randn([4, 3, 6, 6], 0.0, 1.0, scratchnet::DType::F32, 2).to_device(device).unwrap();
    let y = Tensor::from_vec([4], vec![0i64, 1, 2, 3]).unwrap().to_device(device).unwrap();
    let weights =
        |m: &DropNet| -> Vec<Vec<f32>> { m.params().iter().map(|p| p.value.to_vec::<f32>().unwrap()).collect() };
    let eager_step = |m: &mut DropNet, opt: &mut Sgd| {
        let mut g = Graph::new();
        let logits = m.forward(&mut g, &Var::constant(x.clone())).unwrap();
        let loss = g.cross_entropy(&logits, &y).unwrap();
        let value = loss.value().item().unwrap();
        g.backward(&loss).unwrap().accumulate_into(m.params_mut()).unwrap();
        opt.step(m.params_mut()).unwrap();
        value
    };

    let (mut plain, mut opt) = (build(), Sgd::new(0.1, 0.9, 0.0));
    let plain_losses: Vec<f64> = (0..5).map(|_| eager_step(&mut plain, &mut opt)).collect();

    let (mut m, mut opt) = (build(), Sgd::new(0.1, 0.9, 0.0));
    let mut losses: Vec<f64> = (0..2).map(|_| eager_step(&mut m, &mut opt)).collect();
    opt.keep_lr_on(device).unwrap();
    m.prepare_capture(device).unwrap();
    m.prepare_replay().unwrap();
    let graph = GraphStep::capture(&mut m, &mut opt, x.clone(), y.clone(), Default::default()).unwrap();
    for i in 0..3 {
        if i > 0 {
            m.prepare_replay().unwrap();
        }
        graph.replay().unwrap();
        losses.push(graph.loss().item().unwrap());
    }
    assert_eq!(losses, plain_losses);
    assert!(plain_losses.windows(2).all(|w| w[0] != w[1]), "every step draws another mask: {plain_losses:?}");
    assert!(weights(&m) == weights(&plain));
}
