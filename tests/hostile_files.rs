//! Files built to break the readers: each is refused with a one-line error that names the
//! problem (and, through the path-level functions, the file), never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scratchnet::checkpoint::{self, read_tensors};
use scratchnet::data::{Dataset, cifar, folder, npy};
use scratchnet::models::{self, Model};
use scratchnet::{DType, Tensor};

/// Asserts `result` is an error on one line holding every one of `needles`; returns it.
fn refused<T>(result: Result<T, impl ToString>, needles: &[&str]) -> String {
    let Err(e) = result else { panic!("accepted, but should be refused for {needles:?}") };
    let e = e.to_string();
    assert!(!e.contains('\n') && !e.contains('\r'), "not one line: {e:?}");
    for needle in needles {
        assert!(e.contains(needle), "wanted '{needle}' in: {e}");
    }
    e
}

/// A fresh directory for one test.
fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scratchnet-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- .npy ----

/// A version-1.0 `.npy` file with `header` (padded as numpy pads it) and `data`.
fn npy_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.to_string();
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn npy_with_shape(shape: &str, data: &[u8]) -> Vec<u8> {
    npy_file(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"), data)
}

#[test]
fn npy_shape_larger_than_the_data() {
    refused(
        npy::parse(&npy_with_shape("(3, 4)", &[0; 40])),
        &["shape (3, 4)", "needs 48 bytes of data, the file has 40"],
    );
}

#[test]
fn npy_a_trillion_elements_in_a_kilobyte() {
    let bytes = npy_with_shape("(1000000, 1000000)", &[0; 896]);
    assert_eq!(bytes.len(), 1024);
    refused(npy::parse(&bytes), &["needs 4000000000000 bytes of data, the file has 896"]);
}

#[test]
fn npy_shape_whose_product_overflows() {
    refused(npy::parse(&npy_with_shape("(4294967296, 4294967296, 16)", &[])), &["too large to address"]);
    refused(npy::parse(&npy_with_shape("(18446744073709551616,)", &[])), &["not a whole number"]);
}

#[test]
fn npy_fortran_order() {
    let bytes = npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", &[0; 16]);
    refused(npy::parse(&bytes), &["Fortran-ordered arrays are not supported"]);
}

#[test]
fn npy_big_endian() {
    let bytes = npy_file("{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }", &[0; 16]);
    refused(npy::parse(&bytes), &["dtype '>f8' is big-endian", "supported: float16/32/64"]);
}

#[test]
fn npy_unsupported_dtypes_are_named_with_what_is_supported() {
    for descr in ["<c16", "|b1", "<U5", "<u8", "|O", "<M8[ns]"] {
        let bytes = npy_file(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}"), &[0; 16]);
        refused(npy::parse(&bytes), &[&format!("dtype '{descr}' is not supported"), "int8/16/32/64, uint8/16/32"]);
    }
}

#[test]
fn npy_missing_keys() {
    let header = |h: &str| npy::parse(&npy_file(h, &[0; 4]));
    refused(header("{'fortran_order': False, 'shape': (1,), }"), &["no 'descr'"]);
    refused(header("{'descr': '<f4', 'shape': (1,), }"), &["no 'fortran_order'"]);
    refused(header("{'descr': '<f4', 'fortran_order': False, }"), &["no 'shape'"]);
}

#[test]
fn npy_header_that_is_not_utf8() {
    let mut bytes = npy_with_shape("(1,)", &[0; 4]);
    bytes[14] = 0xc3; // a UTF-8 lead byte followed by ASCII
    refused(npy::parse(&bytes), &["the .npy header is not UTF-8 text"]);
}

#[test]
fn npy_unterminated_dict() {
    refused(
        npy::parse(&npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", &[0; 4])),
        &["unterminated"],
    );
    refused(npy::parse(&npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,", &[0; 4])), &["unterminated"]);
    refused(npy::parse(&npy_file("{'descr': '<f4", &[0; 4])), &["unterminated string"]);
}

#[test]
fn npy_negative_or_non_numeric_dimensions() {
    refused(npy::parse(&npy_with_shape("(2, -3)", &[])), &["negative dimension '-3'"]);
    refused(npy::parse(&npy_with_shape("(2, 3.5)", &[])), &["dimension '3.5', not a whole number"]);
    refused(npy::parse(&npy_with_shape("(two,)", &[])), &["dimension 'two', not a whole number"]);
    refused(npy::parse(&npy_with_shape("[2, 3]", &[])), &["'shape' is '[2, 3]", "not a tuple"]);
    let many = format!("({})", vec!["1"; 65].join(", "));
    refused(npy::parse(&npy_with_shape(&many, &[0; 4])), &["more than 64 dimensions"]);
}

#[test]
fn npy_truncated_magic_version_or_length() {
    refused(npy::parse(b""), &["truncated: 0 bytes, shorter than the 6-byte .npy magic"]);
    refused(npy::parse(b"\x93NUMP"), &["truncated: 5 bytes, shorter than the 6-byte .npy magic"]);
    refused(npy::parse(b"\x93NUMPY"), &["ends inside the .npy version"]);
    refused(npy::parse(b"\x93NUMPY\x01"), &["ends inside the .npy version"]);
    refused(npy::parse(b"\x93NUMPY\x01\x00\x76"), &["ends inside the .npy header length"]);
    refused(npy::parse(b"\x93NUMPY\x03\x00\x76\x00\x00"), &["ends inside the .npy header length"]);
    refused(npy::parse(b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}"), &["says 4294967295 bytes, but only 2 follow it"]);
    refused(npy::parse(b"\x93NUMPY\x01\x01\x00\x00"), &[".npy version 1.1 is not supported"]);
    refused(npy::parse(b"PK\x03\x04 a zip"), &["not a .npy file"]);
}

#[test]
fn npy_text_from_the_file_stays_on_one_line() {
    let bytes = npy_file("{'descr': '<f4\n\r\x1b[31m', 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
    let e = refused(npy::parse(&bytes), &["dtype '<f4\\n\\r\\u{1b}[31m' is not supported"]);
    assert!(!e.contains('\x1b'));
}

#[test]
fn npy_zero_and_one_dimensional_arrays_parse() {
    let scalar = npy::parse(&npy_with_shape("()", &1.5f32.to_le_bytes())).unwrap();
    assert_eq!((scalar.dims(), scalar.to_vec::<f32>().unwrap()), (&[][..], vec![1.5]));
    let vector = npy::parse(&npy_with_shape("(2,)", &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40])).unwrap();
    assert_eq!((vector.dims(), vector.to_vec::<f32>().unwrap()), (&[2][..], vec![1.0, 2.0]));
    // Labels keep an integer dtype and their sign; the caller decides what to accept.
    let labels =
        npy::parse(&npy_file("{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }", &[5, 0, 0xff, 0xff]));
    let labels = labels.unwrap();
    assert_eq!((labels.dtype(), labels.to_vec::<i64>().unwrap()), (DType::I64, vec![5, -1]));
    let floats = npy::parse(&npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", &[0; 8])).unwrap();
    assert_eq!(floats.dtype(), DType::F32);
}

#[test]
fn npy_errors_through_read_name_the_file() {
    let dir = workdir("npy");
    let path = dir.join("x.npy");
    std::fs::write(&path, npy_with_shape("(3, 4)", &[0; 40])).unwrap();
    refused(npy::read(&path), &["x.npy: the header's shape (3, 4)"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- CIFAR-10 ----

const RECORD: usize = 3073;

#[test]
fn cifar_empty_file() {
    refused(cifar::decode_records(&[], &mut Vec::new(), &mut Vec::new()), &["holds no records"]);
}

#[test]
fn cifar_truncated_last_record() {
    let bytes = vec![1u8; 2 * RECORD + 1000];
    refused(
        cifar::decode_records(&bytes, &mut Vec::new(), &mut Vec::new()),
        &["record 3 of 3 is truncated: 1000 of 3073 bytes"],
    );
}

#[test]
fn cifar_label_above_nine() {
    let mut bytes = vec![1u8; 2 * RECORD];
    bytes[RECORD] = 200;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    refused(
        cifar::decode_records(&bytes, &mut images, &mut labels),
        &["record 2 of 2 has label 200; CIFAR-10 labels are 0 to 9"],
    );
    assert!(images.is_empty() && labels.is_empty(), "nothing is kept from a refused file");
}

#[test]
fn cifar_errors_through_load_name_the_file() {
    let dir = workdir("cifar");
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), vec![0u8; RECORD]).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), []).unwrap();
    refused(cifar::load(&dir), &["test_batch.bin: holds no records"]);
    std::fs::write(dir.join("data_batch_2.bin"), vec![0u8; RECORD + 7]).unwrap();
    refused(cifar::load(&dir), &["data_batch_2.bin: record 2 of 2 is truncated: 7 of 3073 bytes"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- safetensors ----

/// A safetensors file from its header text and data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn safetensors_header_length_of_two_to_the_63() {
    let mut bytes = safetensors(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]);
    bytes[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    refused(read_tensors(&bytes), &["not a safetensors file", "header length field says 9223372036854775808 bytes"]);
}

#[test]
fn safetensors_header_length_past_the_end() {
    let mut bytes = safetensors(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]);
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&(len - 7).to_le_bytes());
    refused(read_tensors(&bytes), &[&format!("says {} bytes, but only {} follow it", len - 7, len - 8)]);
}

#[test]
fn safetensors_shorter_than_eight_bytes() {
    refused(read_tensors(b"\x10\0\0"), &["3 bytes is shorter than the 8-byte header length"]);
    refused(read_tensors(b""), &["0 bytes is shorter"]);
}

#[test]
fn safetensors_header_that_is_not_json() {
    refused(read_tensors(&safetensors("not json at all", &[])), &["the header is not safetensors JSON"]);
    refused(read_tensors(&safetensors("{\"a\":\n{\"dtype\":\"F32\"}}", &[])), &["the header is not safetensors JSON"]);
    let e = refused(
        read_tensors(&safetensors("{\"a\":{\"dtype\":\"X\\nY\",\"shape\":[],\"data_offsets\":[0,0]}}", &[])),
        &["JSON"],
    );
    assert!(e.contains("X\\nY"), "the file's text is escaped: {e}");
    refused(read_tensors(&[8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, b'{', b'}', 0, 0, 0, 0]), &["not UTF-8"]);
}

#[test]
fn safetensors_data_offsets_out_of_range() {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 4])), &["data_offsets do not end where the file ends"]);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 12])), &["data_offsets do not end where the file ends"]);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 4])), &["data_offsets of a leave a gap or an overlap"]);
}

#[test]
fn safetensors_overlapping_data_offsets() {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 12])), &["data_offsets of b leave a gap or an overlap"]);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 4])), &["leave a gap or an overlap"]);
}

#[test]
fn safetensors_data_offsets_with_a_gap() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 12])), &["data_offsets of b leave a gap or an overlap"]);
}

#[test]
fn safetensors_offsets_that_disagree_with_the_shape() {
    let header = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    refused(
        read_tensors(&safetensors(header, &[0; 8])),
        &["span a different number of bytes than its shape and dtype need"],
    );
    let header = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}"#;
    refused(read_tensors(&safetensors(header, &[0; 8])), &["too large to address"]);
}

#[test]
fn safetensors_header_too_large_for_any_model() {
    let padding = " ".repeat(5 << 20);
    let bytes = safetensors(&format!("{{}}{padding}"), &[]);
    refused(read_tensors(&bytes), &["the header is 5242882 bytes; scratchnet reads headers of up to 4 MiB"]);
}

#[test]
fn safetensors_shape_of_too_many_dimensions() {
    let shape = vec!["1"; 65].join(",");
    let header = format!(r#"{{"a":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,4]}}}}"#);
    refused(read_tensors(&safetensors(&header, &[0; 4])), &["a has 65 dimensions; at most 64 are read"]);
}

/// A resnet20 and its state_dict, as `save` writes it.
fn resnet20_state() -> (Box<dyn Model>, Vec<(String, Tensor)>) {
    let model = models::build("resnet20", 10, 0).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        model.params().iter().map(|p| (p.name().to_string(), p.value.clone())).collect();
    tensors.extend(model.buffers().into_iter().map(|(n, t)| (n, t.clone())));
    (model, tensors)
}

/// Loads `tensors`, encoded, into `model` through a file.
fn load_state(name: &str, model: &mut dyn Model, tensors: &[(String, Tensor)]) -> scratchnet::Result<()> {
    let dir = workdir(name);
    let path = dir.join("w.safetensors");
    std::fs::write(&path, checkpoint::encode(tensors, &BTreeMap::new()).unwrap()).unwrap();
    let result = checkpoint::load(model, &path);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

#[test]
fn safetensors_u8_or_bool_where_a_float_weight_is_expected() {
    for dtype in ["U8", "BOOL", "I32", "F8_E4M3"] {
        let header = format!(r#"{{"conv1.weight":{{"dtype":"{dtype}","shape":[2],"data_offsets":[0,2]}}}}"#);
        let header = header.replace("[0,2]", if dtype == "I32" { "[0,8]" } else { "[0,2]" });
        let data = if dtype == "I32" { vec![0; 8] } else { vec![0; 2] };
        refused(
            read_tensors(&safetensors(&header, &data)),
            &[&format!("conv1.weight has dtype {dtype}, which is not read")],
        );
    }
    // An I64 where the model keeps floats.
    let (mut model, mut tensors) = resnet20_state();
    let at = tensors.iter().position(|(n, _)| n == "conv1.weight").unwrap();
    let shape = tensors[at].1.dims().to_vec();
    tensors[at].1 = Tensor::zeros(shape, DType::I64);
    refused(
        load_state("i64-weight", model.as_mut(), &tensors),
        &["conv1.weight should hold floats (F32, F64, F16 or BF16), the file has I64"],
    );
}

#[test]
fn safetensors_float_where_num_batches_tracked_is_expected() {
    let (mut model, mut tensors) = resnet20_state();
    let at = tensors.iter().position(|(n, _)| n == "bn1.num_batches_tracked").unwrap();
    tensors[at].1 = Tensor::zeros([], DType::F32);
    let e = refused(
        load_state("f32-counter", model.as_mut(), &tensors),
        &["bn1.num_batches_tracked should hold integers (I64), the file has F32"],
    );
    assert!(e.contains("w.safetensors: "), "the file is named: {e}");
}

#[test]
fn safetensors_an_untouched_state_loads() {
    let (mut model, tensors) = resnet20_state();
    load_state("untouched", model.as_mut(), &tensors).unwrap();
}

#[test]
fn safetensors_names_from_the_file_stay_on_one_line() {
    let (mut model, mut tensors) = resnet20_state();
    tensors.push(("evil\nname\x1b[2J".to_string(), Tensor::zeros([1], DType::F32)));
    refused(
        load_state("evil-name", model.as_mut(), &tensors),
        &["holds evil\\nname\\u{1b}[2J, which resnet20 does not have"],
    );
}

// ---- image folders ----

/// A folder `train/a/` holding what `write` puts in `a/<file>`, and an empty `val/`.
fn image_folder(name: &str, file: &str, write: impl FnOnce(&Path)) -> (PathBuf, PathBuf) {
    let dir = workdir(name);
    std::fs::create_dir_all(dir.join("train/a")).unwrap();
    std::fs::create_dir_all(dir.join("val")).unwrap();
    let path = dir.join("train/a").join(file);
    write(&path);
    (dir, path)
}

fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    out
}

/// The offset of the first byte after the start-of-scan header, where the entropy-coded
/// data begins.
fn scan_data_start(jpeg: &[u8]) -> usize {
    let sos = jpeg.windows(2).position(|w| w == [0xff, 0xda]).unwrap();
    sos + 2 + u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize
}

/// CRC-32 as PNG chunks use it (IEEE, reflected).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header says `w`×`h`, with one IDAT chunk of a few bytes (enough for a
/// header reader; not a decodable image).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], body: &[u8]| {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn folder_train_class_without_images() {
    let (dir, _) = image_folder("empty-class", "a.png", |p| image::RgbImage::new(8, 8).save(p).unwrap());
    std::fs::create_dir_all(dir.join("train/dog")).unwrap();
    std::fs::write(dir.join("train/dog/notes.txt"), "no images here").unwrap();
    refused(folder::load(&dir, 224), &["train/dog: holds no .jpg, .jpeg or .png images"]);
    // The same class empty under val/ is fine.
    std::fs::remove_dir_all(dir.join("train/dog")).unwrap();
    std::fs::create_dir_all(dir.join("val/a")).unwrap();
    let (train, val) = folder::load(&dir, 224).unwrap();
    assert_eq!((train.len(), val.len()), (1, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_non_image_with_an_image_name() {
    let (dir, _) = image_folder("not-image", "cat.jpg", |p| std::fs::write(p, "<html>404 Not Found</html>").unwrap());
    refused(folder::load(&dir, 224), &["cat.jpg: cannot decode the image: the file is neither a JPEG nor a PNG"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_zero_size_images() {
    let (dir, _) = image_folder("zero-png", "a.png", |p| std::fs::write(p, png_claiming(0, 5)).unwrap());
    refused(folder::load(&dir, 224), &["a.png: the image is empty (0×5)"]);
    std::fs::remove_dir_all(&dir).unwrap();
    // A JPEG whose frame header says height 0.
    let (dir, _) = image_folder("zero-jpeg", "a.jpg", |p| {
        let mut jpeg = jpeg_bytes(16, 16);
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
        std::fs::write(p, jpeg).unwrap();
    });
    refused(folder::load(&dir, 224), &["a.jpg: cannot decode the image", "zero"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_too_elongated_image() {
    let (dir, _) = image_folder("strip", "a.png", |p| image::RgbImage::new(17, 1).save(p).unwrap());
    refused(folder::load(&dir, 224), &["a.png: a 17×1 image is too elongated (aspect ratio above 16)"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_image_too_large_to_decode() {
    let (dir, _) = image_folder("huge", "a.png", |p| std::fs::write(p, png_claiming(30000, 30000)).unwrap());
    refused(
        folder::load(&dir, 224),
        &["a.png: a 30000×30000 image takes 2574 MiB decoded, more than the 512 MiB allowed"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_jpeg_truncated_after_its_header() {
    let jpeg = jpeg_bytes(64, 48);
    let (dir, path) = image_folder("truncated-jpeg", "a.jpg", |p| std::fs::write(p, &jpeg).unwrap());
    let (train, _) = folder::load(&dir, 224).unwrap();
    train.get(0, None).expect("the undamaged JPEG decodes");
    std::fs::write(&path, &jpeg[..scan_data_start(&jpeg) + 20]).unwrap();
    refused(train.get(0, None), &["a.jpg: cannot decode the image", "Exhausted data"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_jpeg_with_overwritten_scan_data() {
    let mut jpeg = jpeg_bytes(64, 48);
    let (dir, path) = image_folder("damaged-jpeg", "a.jpg", |p| std::fs::write(p, &jpeg).unwrap());
    let (train, _) = folder::load(&dir, 224).unwrap();
    let (undamaged, _) = train.get(0, None).unwrap();
    let middle = (scan_data_start(&jpeg) + jpeg.len()) / 2;
    jpeg[middle..middle + 16].fill(0xff);
    std::fs::write(&path, &jpeg).unwrap();
    refused(train.get(0, None), &["a.jpg: cannot decode the image", "marker"]);
    // The header is intact, so only decoding finds the damage.
    assert!(folder::load(&dir, 224).is_ok());
    assert_eq!(undamaged.len(), 3 * 224 * 224);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_damaged_png_data() {
    let mut png = Vec::new();
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 7]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    png[idat + 10] ^= 0x40; // inside the compressed data; the chunk's CRC no longer matches
    let (dir, _) = image_folder("damaged-png", "a.png", |p| std::fs::write(p, &png).unwrap());
    let (train, _) = folder::load(&dir, 224).unwrap();
    refused(train.get(0, None), &["a.png: cannot decode the image"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
