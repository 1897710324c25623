//! A seeded mutation fuzz of the byte-level readers (`.npy`, safetensors, CIFAR-10, images): valid
//! files are truncated, flipped, given random header lengths, grown by insertions and given
//! huge numbers in their headers, and each reader must neither panic, nor return an error
//! of more than one line, nor allocate more than a bound tied to the input's length.
//!
//! The allocations are counted per thread by the global allocator of this test binary, so
//! the tests may run in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use scratchnet::checkpoint;
use scratchnet::data::{cifar, npy};
use scratchnet::rng::Rng;
use scratchnet::{DType, Tensor};

/// The system allocator, counting the bytes the current thread holds and the most it held.
struct Counting;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let held = HELD.get().saturating_add(bytes);
    HELD.set(held);
    PEAK.set(PEAK.get().max(held));
}

fn shrank(bytes: usize) {
    // Memory freed by another thread than the one that took it can take this below zero.
    HELD.set(HELD.get().saturating_sub(bytes));
}

// SAFETY: every call is passed to `System` unchanged; the counting only touches
// thread-local cells, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            // A move holds the old and the new block at once.
            grew(new_size);
            shrank(layout.size());
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes `parse` allocated on this thread at any one time (what it returns
/// included), and what it returned.
fn peak_during<T>(parse: impl FnOnce() -> T) -> (usize, T) {
    let base = HELD.get();
    PEAK.set(base);
    let out = parse();
    (PEAK.get() - base, out)
}

/// Room for what does not grow with the input: error messages, header strings, small
/// vectors.
const SLACK: usize = 64 << 10;

/// One mutation of `bytes`, drawn from `rng`; `length_field` is where the format keeps its
/// header length (offset and width in bytes).
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, length_field: (usize, usize)) -> String {
    let len = bytes.len();
    match rng.below(7) {
        0 => {
            let at = rng.below(len + 1);
            bytes.truncate(at);
            format!("truncate to {at}")
        }
        1 if len > 0 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let at = rng.below(len);
                bytes[at] = if rng.below(2) == 0 { bytes[at] ^ (1 << rng.below(8)) } else { rng.next_u64() as u8 };
            }
            format!("change {n} bytes")
        }
        2 => {
            let (at, width) = length_field;
            let value = match rng.below(6) {
                0 => 0,
                1 => 1u64 << 63,
                2 => u64::MAX,
                3 => len as u64,
                4 => len.saturating_sub(at + width + rng.below(3)) as u64,
                _ => rng.next_u64() >> rng.below(64),
            };
            let le = value.to_le_bytes();
            for (i, b) in le.iter().take(width).enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *b;
                }
            }
            format!("header length {value}")
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let insert: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, insert);
            format!("insert {n} bytes at {at}")
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            bytes.drain(at..end);
            format!("delete {at}..{end}")
        }
        5 => {
            // Make a number in the header lie: a digit becomes a long run of digits.
            let digits: Vec<usize> = (0..len.min(512)).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                return "no digit to grow".into();
            }
            let at = digits[rng.below(digits.len())];
            let big = ["9", "99999999999", "18446744073709551615", "-1", "1000000000000", "0"][rng.below(6)];
            bytes.splice(at..at + 1, big.bytes());
            format!("number at {at} becomes {big}")
        }
        _ if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(64)).min(len);
            let copy = bytes[at..end].to_vec();
            let to = rng.below(len + 1);
            bytes.splice(to..to, copy);
            format!("copy {at}..{end} to {to}")
        }
        _ => "none".into(),
    }
}

/// Runs `cases` mutants of each seed file through `parse`, failing with the seed and the
/// mutations of the first case that panics, gives a message of more than one line, or (with
/// a `factor`) allocates more than `factor` × its length + [`SLACK`].
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    length_field: (usize, usize),
    factor: Option<usize>,
    cases: usize,
    parse: impl Fn(&[u8]) -> Result<(), String>,
) {
    // The counter must see what the reader keeps: a valid file decodes to at least half
    // its length in values.
    let (peak, parsed) = peak_during(|| parse(&seeds[0]));
    assert!(parsed.is_ok(), "{name}: the first seed is refused: {parsed:?}");
    assert!(factor.is_none() || peak >= seeds[0].len() / 2, "{name}: {peak} bytes counted for the first seed");
    let mut refused = 0;
    for case in 0..cases {
        let seed = case as u64;
        let mut rng = Rng::new(seed);
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        let steps: Vec<String> = (0..1 + rng.below(3)).map(|_| mutate(&mut rng, &mut bytes, length_field)).collect();
        let (peak, outcome) = peak_during(|| catch_unwind(AssertUnwindSafe(|| parse(&bytes))));
        let what = format!("{name} case {case} (Rng seed {seed}, {} bytes, {})", bytes.len(), steps.join(", "));
        match outcome {
            Err(_) => panic!("{what}: the reader panicked"),
            Ok(Err(msg)) => {
                refused += 1;
                assert!(!msg.contains(['\n', '\r']), "{what}: the error is not one line: {msg:?}");
            }
            Ok(Ok(())) => {}
        }
        if let Some(factor) = factor {
            let bound = factor * bytes.len() + SLACK;
            assert!(peak <= bound, "{what}: allocated {peak} bytes, over the bound of {bound}");
        }
    }
    // Most mutants are broken; a fuzz that refuses nothing is not reaching the checks.
    assert!(refused > cases / 4, "{name}: only {refused} of {cases} mutants were refused");
}

#[test]
fn npy_reader_survives_mutations() {
    let mut u8_labels = npy::encode_i64(&[6], &[0; 6]);
    // The same file as uint8: '<i8' becomes '|u1' and the data shrinks to 6 bytes.
    let at = u8_labels.windows(3).position(|w| w == b"<i8").unwrap();
    u8_labels[at..at + 3].copy_from_slice(b"|u1");
    u8_labels.truncate(u8_labels.len() - 6 * 7);
    assert_eq!(npy::parse(&u8_labels).unwrap().to_vec::<i64>().unwrap(), vec![0; 6]);
    let mut many_u8 = npy::encode_i64(&[300_000], &[]);
    many_u8[at..at + 3].copy_from_slice(b"|u1");
    many_u8.extend((0..300_000).map(|i| (i % 10) as u8));
    assert_eq!(npy::parse(&many_u8).unwrap().dims(), &[300_000]);
    let seeds = vec![
        npy::encode_f32(&[2, 3, 4, 4], &(0..96).map(|i| i as f32).collect::<Vec<_>>()),
        npy::encode_f32(&[], &[1.5]),
        npy::encode_i64(&[5], &[3, 1, 4, 1, 5]),
        u8_labels,
        many_u8,
        npy::encode_f32(&[64, 1000], &vec![0.5; 64_000]),
    ];
    // uint8 labels become int64: 8 bytes held for every byte read, the most any dtype
    // grows (int32 → int64 and float16 → float32 double, float64 → float32 halves).
    fuzz("npy", &seeds, (8, 2), Some(8), 5000, |b| npy::parse(b).map(|_| ()));
}

#[test]
fn safetensors_reader_survives_mutations() {
    let tensors = vec![
        ("conv.weight".to_string(), Tensor::randn([2, 3, 3, 3], 0.0, 1.0, DType::F32, 1)),
        ("bn.running_mean".to_string(), Tensor::randn([7], 0.0, 1.0, DType::F32, 2)),
        ("bn.num_batches_tracked".to_string(), Tensor::from_vec([], vec![12i64]).unwrap()),
        ("half".to_string(), Tensor::randn([3], 0.0, 1.0, DType::F16, 3)),
        ("brain".to_string(), Tensor::randn([2, 2], 0.0, 1.0, DType::BF16, 4)),
        ("double".to_string(), Tensor::randn([2], 0.0, 1.0, DType::F64, 5)),
        ("fc.weight".to_string(), Tensor::randn([100, 1000], 0.0, 1.0, DType::F32, 6)),
    ];
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let seeds = vec![
        checkpoint::encode(&tensors, &metadata).unwrap(),
        checkpoint::encode(&tensors[..1], &BTreeMap::new()).unwrap(),
        checkpoint::encode(&[], &BTreeMap::new()).unwrap(),
    ];
    assert_eq!(checkpoint::read_tensors(&seeds[0]).unwrap().len(), 7);
    // Tensors keep their dtype, so the data is held once more; the JSON header becomes
    // maps, strings and shape vectors a few times its size.
    fuzz("safetensors", &seeds, (0, 8), Some(4), 5000, |b| checkpoint::read_tensors(b).map(|_| ()));
}

#[test]
fn cifar_reader_survives_mutations() {
    let mut rng = Rng::new(9);
    let record = |label: u8, rng: &mut Rng| -> Vec<u8> {
        std::iter::once(label).chain((0..3072).map(|_| rng.next_u64() as u8)).collect()
    };
    let seeds = vec![
        record(3, &mut rng),
        [record(0, &mut rng), record(9, &mut rng)].concat(),
        (0..100).flat_map(|i| record(i % 10, &mut rng)).collect(),
    ];
    // Every pixel byte becomes a 4-byte f32, every label byte an 8-byte i64.
    fuzz("cifar", &seeds, (0, 1), Some(4), 2000, |b| cifar::decode_records(b, &mut Vec::new(), &mut Vec::new()));
}

/// The one place the bound is looser: a JSON header made of a single long shape, where every
/// two-byte "1," becomes a JSON value the `safetensors` crate buffers (serde's `flatten`)
/// and then a `usize`. The cost stays proportional to the header, which `read_tensors` caps
/// at 4 MiB.
#[test]
fn a_header_of_one_long_shape_costs_a_bounded_multiple_of_its_length() {
    let shape = vec!["1"; 100_000].join(",");
    let header = format!(r#"{{"a":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,4]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let (peak, result) = peak_during(|| checkpoint::read_tensors(&bytes).map(|_| ()));
    assert!(result.unwrap_err().contains("100000 dimensions; at most 64 are read"));
    assert!(peak <= 40 * bytes.len() + SLACK, "{peak} bytes for a {}-byte file", bytes.len());
}

/// Image files, through an image folder: the header check at load, then the decode of a
/// batch. A mutant may claim any size up to the decoder's cap (512 MiB decoded), so the
/// allocation is not bounded by the file's length here; panics and multi-line errors are
/// what is looked for.
#[test]
fn image_reader_survives_mutations() {
    use scratchnet::data::{Dataset, folder};
    let dir = std::env::temp_dir().join(format!("scratchnet-fuzz-images-{}", std::process::id()));
    let class_dir = dir.join("val").join("c");
    std::fs::create_dir_all(&class_dir).unwrap();
    let encode = |img: image::DynamicImage, format: image::ImageFormat| -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let rgb = image::RgbImage::from_fn(12, 9, |x, y| image::Rgb([(x * 20) as u8, (y * 25) as u8, 90]));
    let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(7, 5, |x, y| image::Luma([(x * 9000 + y) as u16]));
    let seeds = vec![
        encode(image::DynamicImage::ImageRgb8(rgb.clone()), image::ImageFormat::Png),
        encode(image::DynamicImage::ImageLuma16(grey16), image::ImageFormat::Png),
        encode(image::DynamicImage::ImageRgb8(rgb), image::ImageFormat::Jpeg),
    ];
    let classes = ["c".to_string()];
    let path = class_dir.join("x.png");
    // A PNG keeps its width at bytes 16..20; a JPEG's size sits a little further on.
    fuzz("image", &seeds, (16, 4), None, 2000, |bytes| {
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        let set = folder::load_held_out(&dir, Some(&classes), 8).map_err(|e| e.to_string())?;
        set.get(0, None).map(|_| ()).map_err(|e| e.to_string())
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
