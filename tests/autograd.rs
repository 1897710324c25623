//! The tape's bookkeeping: what it records, where gradients go, and what it refuses.

use scratchnet::autograd::Mode;
use scratchnet::nn::{Linear, Module};
use scratchnet::{DType, Graph, Param, Tensor, Var};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

#[test]
fn a_parameter_read_twice_gets_the_sum_of_both_gradients() {
    let mut p = Param::new("w", t(&[3], &[1.0, -2.0, 3.0]));
    let mut g = Graph::new();
    let a = g.param(&p);
    let b = g.param(&p);
    let y = g.add(&a, &b).unwrap();
    let grads = g.backward_with_grad(&y, t(&[3], &[1.0, 2.0, 3.0])).unwrap();
    assert_eq!(grads.of_param(&p).unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0, 6.0]);
    grads.accumulate_into([&mut p]).unwrap();
    assert_eq!(p.grad.as_ref().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0, 6.0]);

    // A second backward pass adds to the stored gradient.
    let mut g = Graph::new();
    let a = g.param(&p);
    let y = g.relu(&a).unwrap();
    g.backward_with_grad(&y, t(&[3], &[1.0, 1.0, 1.0])).unwrap().accumulate_into([&mut p]).unwrap();
    assert_eq!(p.grad.as_ref().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 4.0, 7.0]);
}

#[test]
fn constants_record_nothing_and_eval_graphs_record_nothing() {
    let mut g = Graph::new();
    let x = g.input(t(&[2, 2], &[1.0, -1.0, 2.0, -2.0]));
    let y = g.relu(&x).unwrap();
    assert!(!y.requires_grad());
    assert!(g.is_empty(), "an op on constants is not recorded");

    let p = Param::new("w", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
    let mut g = Graph::eval();
    let w = g.param(&p);
    let y = g.add(&w, &x).unwrap();
    assert!(!y.requires_grad() && g.is_empty());
    assert!(g.backward(&y).is_err());
    assert!(!g_is_training());

    fn g_is_training() -> bool {
        Graph::eval().is_training()
    }
}

#[test]
fn only_inputs_that_need_gradients_get_them() {
    // linear(x, W): x is a constant, so only W gets a gradient.
    let mut layer = Linear::new("fc", 3, 2, true, 1);
    let mut g = Graph::new();
    let x = Var::constant(Tensor::uniform([4, 3], -1.0, 1.0, DType::F32, 2));
    let y = layer.forward(&mut g, &x).unwrap();
    let loss = g.cross_entropy(&y, &Tensor::from_vec([4], vec![0i64, 1, 1, 0]).unwrap()).unwrap();
    let grads = g.backward(&loss).unwrap();
    assert!(grads.of(&x).is_none());
    assert_eq!(grads.of_param(&layer.weight).unwrap().dims(), &[2, 3]);
    assert_eq!(grads.of_param(layer.bias.as_ref().unwrap()).unwrap().dims(), &[2]);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut g1 = Graph::new();
    let a = g1.leaf(t(&[2], &[1.0, 2.0]));
    let mut g2 = Graph::new();
    let e = g2.relu(&a).unwrap_err().to_string();
    assert!(e.contains("another graph"), "{e}");

    let y = g1.relu(&a).unwrap();
    let e = g1.backward(&y).unwrap_err().to_string();
    assert!(e.contains("one-element loss, got shape [2]"), "{e}");

    let mut g = Graph::new();
    let a = g.leaf(t(&[2], &[1.0, 2.0]));
    let e = g.backward_with_grad(&a, t(&[3], &[1.0, 1.0, 1.0])).unwrap_err().to_string();
    assert!(e.contains("output gradient has shape [3]"), "{e}");
}

#[test]
fn backward_reaches_a_leaf_through_a_mixed_path() {
    // y = relu(x) + x: the gradient is 2 where x > 0 and 1 elsewhere.
    let mut g = Graph::with_mode(Mode { recording: true, training: true });
    let x = g.leaf(t(&[4], &[-1.0, 2.0, -3.0, 4.0]));
    let r = g.relu(&x).unwrap();
    let y = g.add(&r, &x).unwrap();
    let grads = g.backward_with_grad(&y, t(&[4], &[1.0, 1.0, 1.0, 1.0])).unwrap();
    assert_eq!(grads.of(&x).unwrap().to_vec::<f64>().unwrap(), vec![1.0, 2.0, 1.0, 2.0]);
}

#[test]
fn dropout_is_the_identity_in_an_eval_graph() {
    let x = Var::constant(Tensor::full([100], 3.0, DType::F32));
    let mut g = Graph::eval();
    let y = g.dropout(&x, 0.5, 1).unwrap();
    assert!(y.value().shares_storage_with(x.value()));
    assert!(g.dropout(&x, 2.0, 1).is_err(), "the probability is still checked");
    let mut g = Graph::new();
    let y = g.dropout(&x, 0.5, 1).unwrap();
    assert!(y.value().to_f64_vec().unwrap().contains(&0.0));
}
