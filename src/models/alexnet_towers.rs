//! AlexNet split over two devices as in the paper (`--towers --devices A,B`): each device
//! holds one tower, half of every layer's kernels, with its parameters, activations and
//! gradients; the towers exchange activations only where the paper's GPUs communicated.
//!
//! ```text
//!            device A (tower 0)                    device B (tower 1)
//! image ─────────────────────────── copy ──────────────────────────── image
//! conv1  48 kernels → ReLU → LRN ◄── 2 channels ──► LRN ← ReLU ← conv1  48 kernels
//! pool1                                                               pool1
//! conv2 128 kernels (its 48 channels) → ReLU → LRN ◄─ 2 ─► … conv2 128 kernels (its 48)
//! pool2 ───────────────────────────── both halves ────────────────────── pool2
//! conv3 192 kernels over all 256 channels            conv3 192 kernels over all 256
//! conv4 192 (its 192) → conv5 128 (its 192) → pool5        the same on tower 1
//! fc6 2048 units ─────────────────── both halves ─────────────────── fc6 2048 units
//! dropout (one mask) → fc7 2048 ──── both halves ──── fc7 2048 ← dropout (the same mask)
//! fc8 ⌈K/2⌉ ─────────────────────── logits on A ──────────────────────── fc8 ⌊K/2⌋
//! ```
//!
//! The one exchange the paper did not make is the LRN's: a response at channel c is normalised
//! over channels c − 2 … c + 2, so the two channels next to the split belong to the other
//! tower. The paper normalised each GPU's maps on their own; the one-device model that this
//! must match (the Caffe model, `alexnet.rs`) normalises across all of them, so each tower
//! receives the other's two edge channels (size / 2 of them) before its LRN.
//!
//! Every other layer is computed exactly as the one-device network computes it: a tower's
//! convolution is the grouped layer's group (conv2, conv4, conv5) or half of the output
//! kernels (conv1, conv3), and a fully connected layer's half is half of the output units.
//! Dropout draws one seed per layer and step and drops both devices' copies of the
//! activation with it: the same mask as the one device's. So the losses and weights are
//! those of one device, to rounding. The weights are saved merged, with the one-device
//! model's names ([`Model::merged`]), so a checkpoint loads on one device.

use super::{AlexNet, Model};
use crate::autograd::{Graph, LayerOp, Param, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, Dropout, Linear, MaxPool2d, Module};
use crate::ops::conv2d::Conv2dParams;
use crate::ops::lrn::LrnParams;
use crate::tensor::{Shape, Tensor};

/// One device's half of AlexNet.
struct Tower {
    conv1: Conv2d,
    pool1: MaxPool2d,
    conv2: Conv2d,
    pool2: MaxPool2d,
    conv3: Conv2d,
    conv4: Conv2d,
    conv5: Conv2d,
    pool5: MaxPool2d,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
}

impl Tower {
    fn convs(&self) -> [&Conv2d; 5] {
        [&self.conv1, &self.conv2, &self.conv3, &self.conv4, &self.conv5]
    }
    fn linears(&self) -> [&Linear; 3] {
        [&self.fc6, &self.fc7, &self.fc8]
    }
}

pub struct AlexNetTowers {
    num_classes: usize,
    devices: [Device; 2],
    towers: [Tower; 2],
    /// The two LRN layers' parameters (after conv1, after conv2).
    norm1: LrnParams,
    norm2: LrnParams,
    drop6: Dropout,
    drop7: Dropout,
}

/// Rows `start..end` of a parameter (its first dimension), on `device`.
fn rows(t: &Tensor, start: usize, end: usize, device: Device) -> Result<Tensor> {
    let per: usize = t.dims()[1..].iter().product();
    let mut dims = t.dims().to_vec();
    dims[0] = end - start;
    let v = t.to_vec::<f32>()?;
    Tensor::from_vec(dims, v[start * per..end * per].to_vec())?.to_device(device)
}

/// The two halves' rows one after the other, on the host.
fn stacked(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut dims = a.dims().to_vec();
    dims[0] += b.dims()[0];
    let mut v = a.to_vec::<f32>()?;
    v.extend(b.to_vec::<f32>()?);
    Tensor::from_vec(dims, v)
}

fn tower_name(t: usize, layer: &str) -> String {
    format!("tower{t}.{layer}")
}

/// Rows `start..end` of a layer's weight and bias, named for tower `t`'s layer `name`.
fn half_params(
    name: &str,
    (weight, bias): (&Param, Option<&Param>),
    (start, end): (usize, usize),
    device: Device,
) -> Result<(Param, Option<Param>)> {
    let weight = Param::new(format!("{name}.weight"), rows(&weight.value, start, end, device)?);
    let bias = match bias {
        Some(b) => Some(Param::new(format!("{name}.bias"), rows(&b.value, start, end, device)?)),
        None => None,
    };
    Ok((weight, bias))
}

/// Tower `t`'s half of a convolution: output kernels `start..end`, as a convolution of one
/// group (a grouped layer's group, or a slice of an ungrouped layer's kernels).
fn conv_half(c: &Conv2d, t: usize, range: (usize, usize), device: Device) -> Result<Conv2d> {
    let name = tower_name(t, &c.name);
    let (weight, bias) = half_params(&name, (&c.weight, c.bias.as_ref()), range, device)?;
    Ok(Conv2d { name, weight, bias, params: Conv2dParams { groups: 1, ..c.params } })
}

fn linear_half(l: &Linear, t: usize, range: (usize, usize), device: Device) -> Result<Linear> {
    let name = tower_name(t, &l.name);
    let (weight, bias) = half_params(&name, (&l.weight, l.bias.as_ref()), range, device)?;
    Ok(Linear { name, weight, bias })
}

/// A whole layer's weight and bias: its two towers' halves stacked.
fn stack_halves(
    whole: (&mut Param, Option<&mut Param>),
    a: (&Param, Option<&Param>),
    b: (&Param, Option<&Param>),
) -> Result<()> {
    whole.0.value = stacked(&a.0.value, &b.0.value)?;
    if let (Some(w), Some(p), Some(q)) = (whole.1, a.1, b.1) {
        w.value = stacked(&p.value, &q.value)?;
    }
    Ok(())
}

/// Tower `t`'s share of `n` kernels or units: the first ⌈n/2⌉, or the rest.
fn half(n: usize, t: usize) -> (usize, usize) {
    let first = n.div_ceil(2);
    if t == 0 { (0, first) } else { (first, n) }
}

impl AlexNetTowers {
    /// `net` split into two towers on `devices` (its weights wherever they are).
    pub fn split(net: AlexNet, devices: [Device; 2]) -> Result<AlexNetTowers> {
        if devices[0] == devices[1] {
            return Err(Error::Device(format!("AlexNet's towers need two devices, got {} twice", devices[0])));
        }
        let tower = |t: usize| -> Result<Tower> {
            let d = devices[t];
            let pool = |p: &MaxPool2d| MaxPool2d { name: tower_name(t, &p.name), params: p.params };
            let out = |c: &Conv2d| half(c.weight.value.dims()[0], t);
            let units = |l: &Linear| half(l.weight.value.dims()[0], t);
            Ok(Tower {
                conv1: conv_half(&net.conv1, t, out(&net.conv1), d)?,
                pool1: pool(&net.pool1),
                conv2: conv_half(&net.conv2, t, out(&net.conv2), d)?,
                pool2: pool(&net.pool2),
                conv3: conv_half(&net.conv3, t, out(&net.conv3), d)?,
                conv4: conv_half(&net.conv4, t, out(&net.conv4), d)?,
                conv5: conv_half(&net.conv5, t, out(&net.conv5), d)?,
                pool5: pool(&net.pool5),
                fc6: linear_half(&net.fc6, t, units(&net.fc6), d)?,
                fc7: linear_half(&net.fc7, t, units(&net.fc7), d)?,
                fc8: linear_half(&net.fc8, t, units(&net.fc8), d)?,
            })
        };
        let towers = [tower(0)?, tower(1)?];
        Ok(AlexNetTowers {
            num_classes: net.num_classes,
            devices,
            towers,
            norm1: net.norm1.params,
            norm2: net.norm2.params,
            drop6: net.drop6,
            drop7: net.drop7,
        })
    }

    /// `x` on tower `t`'s device: itself if it is there, else a copy, as a profiled exchange.
    fn on_device_of(&self, g: &mut Graph, name: &str, x: &Var, t: usize) -> Result<Var> {
        exchange(g, x, self.devices[t], &format!("{name}.to{t}"))
    }

    /// `x` on both devices.
    fn to_both(&self, g: &mut Graph, name: &str, x: &Var) -> Result<[Var; 2]> {
        Ok([self.on_device_of(g, name, x, 0)?, self.on_device_of(g, name, x, 1)?])
    }

    /// Both towers' halves `[tower 0's channels, tower 1's]` on each device (conv3's input,
    /// the fully connected layers' inputs).
    fn gather(&self, g: &mut Graph, name: &str, halves: &[Var; 2]) -> Result<[Var; 2]> {
        let [a0, a1] = self.to_both(g, name, &halves[0])?;
        let [b0, b1] = self.to_both(g, name, &halves[1])?;
        Ok([g.concat(&[&a0, &b0])?, g.concat(&[&a1, &b1])?])
    }

    /// [`AlexNetTowers::gather`] for `[N, F]` activations (concatenated along the features).
    fn gather_features(&self, g: &mut Graph, name: &str, halves: &[Var; 2]) -> Result<[Var; 2]> {
        let as_maps = |g: &mut Graph, v: &Var| -> Result<Var> { g.reshape(v, [v.dims()[0], v.dims()[1], 1, 1]) };
        let maps = [as_maps(g, &halves[0])?, as_maps(g, &halves[1])?];
        let [a, b] = self.gather(g, name, &maps)?;
        Ok([g.flatten(&a)?, g.flatten(&b)?])
    }
}

/// `x` on `to`: itself if it is there, else a copy (a layer of the profile named `label`).
fn exchange(g: &mut Graph, x: &Var, to: Device, label: &str) -> Result<Var> {
    let from = x.value().device();
    if from == to {
        return Ok(x.clone());
    }
    g.begin_layer(label);
    let y = g.copy_to(x, to)?;
    g.record_layer(label, x, &y, 0, LayerOp::Exchange { from, to });
    Ok(y)
}

/// LRN across the split of two towers' channels `h` (tower 0's first): each tower normalises
/// its channels with the other tower's `size / 2` channels next to the split beside them,
/// then keeps its own, which gives what one LRN over all the channels gives.
fn lrn_across_towers(g: &mut Graph, p: LrnParams, devices: [Device; 2], name: &str, h: [Var; 2]) -> Result<[Var; 2]> {
    let edge = p.size / 2;
    let (c0, c1) = (h[0].dims()[1], h[1].dims()[1]);
    if edge == 0 {
        return Ok([g.lrn(&h[0], p)?, g.lrn(&h[1], p)?]);
    }
    let from1 = g.narrow_channels(&h[1], 0, edge.min(c1))?;
    let from0 = g.narrow_channels(&h[0], c0 - edge.min(c0), edge.min(c0))?;
    let from1 = exchange(g, &from1, devices[0], &format!("{name}.edge1.to0"))?;
    let from0 = exchange(g, &from0, devices[1], &format!("{name}.edge0.to1"))?;
    let mut out = Vec::with_capacity(2);
    for (t, (ext, keep)) in
        [(g.concat(&[&h[0], &from1])?, 0), (g.concat(&[&from0, &h[1]])?, from0.dims()[1])].into_iter().enumerate()
    {
        let label = tower_name(t, name);
        g.begin_layer(&label);
        let y = g.lrn(&ext, p)?;
        let y = g.narrow_channels(&y, keep, h[t].dims()[1])?;
        g.record_layer(&label, &h[t], &y, 0, LayerOp::Lrn(p));
        out.push(y);
    }
    let [a, b]: [Var; 2] = out.try_into().map_err(|_| Error::Autograd("two towers".into()))?;
    Ok([a, b])
}

impl Module for AlexNetTowers {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let xs = self.to_both(g, "input", x)?;
        let mut h = Vec::with_capacity(2);
        for (t, x) in xs.iter().enumerate() {
            h.push(self.towers[t].conv1.forward_relu(g, x)?);
        }
        let h: [Var; 2] = h.try_into().map_err(|_| Error::Autograd("two towers".into()))?;
        let h = lrn_across_towers(g, self.norm1, self.devices, "norm1", h)?;
        let mut next = Vec::with_capacity(2);
        for (t, h) in h.iter().enumerate() {
            let p = self.towers[t].pool1.forward(g, h)?;
            next.push(self.towers[t].conv2.forward_relu(g, &p)?);
        }
        let h: [Var; 2] = next.try_into().map_err(|_| Error::Autograd("two towers".into()))?;
        let h = lrn_across_towers(g, self.norm2, self.devices, "norm2", h)?;
        let pooled = [self.towers[0].pool2.forward(g, &h[0])?, self.towers[1].pool2.forward(g, &h[1])?];
        let full = self.gather(g, "conv3.input", &pooled)?;
        let mut flat = Vec::with_capacity(2);
        for (t, x) in full.iter().enumerate() {
            let tower = &mut self.towers[t];
            let h = tower.conv3.forward_relu(g, x)?;
            let h = tower.conv4.forward_relu(g, &h)?;
            let h = tower.conv5.forward_relu(g, &h)?;
            let h = tower.pool5.forward(g, &h)?;
            flat.push(g.flatten(&h)?);
        }
        let flat: [Var; 2] = flat.try_into().map_err(|_| Error::Autograd("two towers".into()))?;
        let full = self.gather_features(g, "fc6.input", &flat)?;
        let h6 = [self.towers[0].fc6.forward_relu(g, &full[0])?, self.towers[1].fc6.forward_relu(g, &full[1])?];
        let full = self.gather_features(g, "fc7.input", &h6)?;
        let names = [tower_name(0, "drop6"), tower_name(1, "drop6")];
        let d6 = self.drop6.forward_copies(g, &full, &names)?;
        let h7 = [self.towers[0].fc7.forward_relu(g, &d6[0])?, self.towers[1].fc7.forward_relu(g, &d6[1])?];
        let full = self.gather_features(g, "fc8.input", &h7)?;
        let names = [tower_name(0, "drop7"), tower_name(1, "drop7")];
        let d7 = self.drop7.forward_copies(g, &full, &names)?;
        let logits = [self.towers[0].fc8.forward(g, &d7[0])?, self.towers[1].fc8.forward(g, &d7[1])?];
        // The logits meet on the first device, where the loss is taken.
        let second = self.on_device_of(g, "logits", &logits[1], 0)?;
        let maps = [
            g.reshape(&logits[0], [x.dims()[0], logits[0].dims()[1], 1, 1])?,
            g.reshape(&second, [x.dims()[0], second.dims()[1], 1, 1])?,
        ];
        let both = g.concat(&[&maps[0], &maps[1]])?;
        g.flatten(&both)
    }

    fn params(&self) -> Vec<&Param> {
        let mut out = Vec::new();
        for t in &self.towers {
            for c in t.convs() {
                out.push(&c.weight);
                out.extend(c.bias.as_ref());
            }
            for l in t.linears() {
                out.push(&l.weight);
                out.extend(l.bias.as_ref());
            }
        }
        out
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = Vec::new();
        for t in &mut self.towers {
            for c in [&mut t.conv1, &mut t.conv2, &mut t.conv3, &mut t.conv4, &mut t.conv5] {
                out.push(&mut c.weight);
                out.extend(c.bias.as_mut());
            }
            for l in [&mut t.fc6, &mut t.fc7, &mut t.fc8] {
                out.push(&mut l.weight);
                out.extend(l.bias.as_mut());
            }
        }
        out
    }

    fn set_dropout(&mut self, p: f64) -> usize {
        self.drop6.p = p;
        self.drop7.p = p;
        2
    }

    fn active_dropout(&self) -> usize {
        usize::from(self.drop6.p > 0.0) + usize::from(self.drop7.p > 0.0)
    }

    fn to_device(&mut self, device: Device) -> Result<()> {
        Err(Error::Device(format!(
            "AlexNet's towers live on {} and {}; they cannot all move to {device}",
            self.devices[0], self.devices[1]
        )))
    }
}

impl Model for AlexNetTowers {
    fn name(&self) -> &str {
        "alexnet"
    }
    fn input_size(&self) -> [usize; 3] {
        [3, 227, 227]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn check_input(&self, shape: &Shape) -> Result<()> {
        AlexNet::check_image_shape(shape)
    }

    /// The one-device AlexNet on the CPU, each layer's halves stacked back together.
    fn merged(&self) -> Result<Option<Box<dyn Model>>> {
        let mut net = AlexNet::new(self.num_classes, 0);
        let [a, b] = &self.towers;
        for (whole, x, y) in [
            (&mut net.conv1, &a.conv1, &b.conv1),
            (&mut net.conv2, &a.conv2, &b.conv2),
            (&mut net.conv3, &a.conv3, &b.conv3),
            (&mut net.conv4, &a.conv4, &b.conv4),
            (&mut net.conv5, &a.conv5, &b.conv5),
        ] {
            stack_halves(
                (&mut whole.weight, whole.bias.as_mut()),
                (&x.weight, x.bias.as_ref()),
                (&y.weight, y.bias.as_ref()),
            )?;
        }
        for (whole, x, y) in
            [(&mut net.fc6, &a.fc6, &b.fc6), (&mut net.fc7, &a.fc7, &b.fc7), (&mut net.fc8, &a.fc8, &b.fc8)]
        {
            stack_halves(
                (&mut whole.weight, whole.bias.as_mut()),
                (&x.weight, x.bias.as_ref()),
                (&y.weight, y.bias.as_ref()),
            )?;
        }
        net.drop6.p = self.drop6.p;
        net.drop7.p = self.drop7.p;
        Ok(Some(Box::new(net)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two towers' LRN with the edges exchanged equals one LRN over all the channels, forward
    /// and backward; without the edges, the channels beside the split would differ.
    #[test]
    fn lrn_across_the_split_is_one_lrn_over_all_channels() {
        let p = LrnParams::alexnet();
        // Large values, so that a neighbour's square moves the result well above rounding.
        let x = Tensor::randn([2, 10, 3, 3], 0.0, 30.0, crate::tensor::DType::F32, 4);
        let dy = Tensor::randn([2, 10, 3, 3], 0.0, 1.0, crate::tensor::DType::F32, 5);
        let mut g = Graph::new();
        let whole = g.leaf(x.clone());
        let y = g.lrn(&whole, p).unwrap();
        let dx = g.backward_with_grad(&y, dy.clone()).unwrap().of(&whole).unwrap().to_f64_vec().unwrap();
        let y = y.value().to_f64_vec().unwrap();

        let devices = [Device::Emu(0), Device::Emu(1)];
        let half = |t: usize| {
            let v = x.to_f64_vec().unwrap();
            let mut out = Vec::new();
            for n in 0..2 {
                let start = (n * 10 + 5 * t) * 9;
                out.extend(v[start..start + 45].iter().map(|&a| a as f32));
            }
            Tensor::from_vec([2, 5, 3, 3], out).unwrap().to_device(devices[t]).unwrap()
        };
        let mut g = Graph::new();
        let h = [g.leaf(half(0)), g.leaf(half(1))];
        let [a, b] = lrn_across_towers(&mut g, p, devices, "norm", h.clone()).unwrap();
        assert_eq!((a.value().device(), b.value().device()), (devices[0], devices[1]));
        let b_here = g.copy_to(&b, devices[0]).unwrap();
        let both = g.concat(&[&a, &b_here]).unwrap();
        let grads = g.backward_with_grad(&both, dy.to_device(devices[0]).unwrap()).unwrap();
        let got = both.value().to_f64_vec().unwrap();
        let close = |u: &[f64], v: &[f64], what: &str| {
            for (i, (p, q)) in u.iter().zip(v).enumerate() {
                assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{what}[{i}]: {p} vs {q}");
            }
        };
        close(&got, &y, "y");
        let (g0, g1) = (grads.of(&h[0]).unwrap().to_f64_vec().unwrap(), grads.of(&h[1]).unwrap().to_f64_vec().unwrap());
        for n in 0..2 {
            close(&g0[n * 45..n * 45 + 45], &dx[n * 90..n * 90 + 45], "dx of tower 0");
            close(&g1[n * 45..n * 45 + 45], &dx[n * 90 + 45..n * 90 + 90], "dx of tower 1");
        }
        // Each tower's own LRN alone differs beside the split: the edges matter.
        let alone = crate::ops::lrn::forward(&half(0), p).unwrap().to_f64_vec().unwrap();
        let last = 4 * 9; // channel 4, the last of tower 0, first image
        assert!((alone[last] - y[last]).abs() > 1e-4 * y[last].abs(), "{} vs {}", alone[last], y[last]);
    }
}
