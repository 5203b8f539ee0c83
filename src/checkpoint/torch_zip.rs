//! A safe reader for PyTorch zip checkpoints (`torch.save`, `.pth`/`.pt`/`.bin`).
//!
//! The pickle in `ARCHIVE/data.pkl` is interpreted by a small stack machine that understands
//! only what state dicts need — protocol 2–5 opcodes for containers, strings and numbers,
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`
//! and the `torch.*Storage` types as persistent ids into `ARCHIVE/data/KEY`. Any other global is
//! refused with an error naming it: nothing is ever executed. TorchScript archives (OpenAI's
//! `ViT-B-32.pt`) are read the same way: their `__torch__.*` module classes become inert
//! attribute containers whose tensors are named by attribute path; no code is run. Storages shared by several keys
//! (views, offsets, strides) are read once and viewed with `as_strided`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[allow(dead_code)] // every pickle value is kept, even where only the tensors are used
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage: dtype and the key of its bytes in `data/`.
    Storage(Kind, String),
    /// A tensor view of a storage.
    Tensor { kind: Kind, key: String, offset: i64, size: Vec<i64>, stride: Vec<i64> },
    /// An inert TorchScript module object (`__torch__.*` class) and its attributes.
    Object(Vec<(String, Value)>),
    Mark,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn allowed_global(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_parameter")
    ) || (module == "torch" && storage_kind(name).is_some())
        // TorchScript module classes: only ever built as inert attribute containers.
        || module.starts_with("__torch__.")
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(xs) | Value::List(xs) => xs
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(Error::Invalid(format!("pickle: {what} holds a non-integer"))),
            })
            .collect(),
        _ => Err(Error::Invalid(format!("pickle: {what} is not a tuple"))),
    }
}

/// Interprets a pickle; returns the top-level value.
fn unpickle(data: &[u8], origin: &str) -> Result<Value> {
    let err = |m: String| Error::Invalid(format!("{origin}: {m}"));
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        let s = data.get(*pos..*pos + n).ok_or_else(|| Error::Invalid(format!("{origin}: truncated pickle")))?;
        *pos += n;
        Ok(s)
    };
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let m = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| Error::Invalid(format!("{origin}: pickle MARK missing")))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut pos, 1)?.first().unwrap();
        match op {
            0x80 => {
                take(&mut pos, 1)?;
            } // PROTO
            0x95 => {
                take(&mut pos, 8)?;
            } // FRAME
            b'.' => return stack.pop().ok_or_else(|| err("empty pickle stack at STOP".into())),
            b'}' => stack.push(Value::Dict(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b')' => stack.push(Value::Tuple(vec![])),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(take(&mut pos, 1)?[0] as i64)),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))
            }
            0x8a => {
                let n = take(&mut pos, 1)?[0] as usize;
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return Err(err(format!("LONG1 of {n} bytes")));
                }
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v))
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) as usize,
                    0x8d => u64::from_le_bytes(take(&mut pos, 8)?.try_into().unwrap()) as usize,
                    _ => take(&mut pos, 1)?[0] as usize,
                };
                let s = String::from_utf8_lossy(take(&mut pos, n)?).into_owned();
                stack.push(Value::Str(s))
            }
            b'q' => {
                let i = take(&mut pos, 1)?[0] as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("BINPUT on empty stack".into()))?);
            }
            b'r' => {
                let i = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap());
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("LONG_BINPUT on empty stack".into()))?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("MEMOIZE on empty stack".into()))?);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { take(&mut pos, 1)?[0] as u32 } else { u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) };
                stack.push(memo.get(&i).cloned().ok_or_else(|| err(format!("memo {i} missing")))?)
            }
            b'c' | 0x93 => {
                let (module, name) = if op == b'c' {
                    let rest = &data[pos..];
                    let l1 = rest.iter().position(|&c| c == b'\n').ok_or_else(|| err("bad GLOBAL".into()))?;
                    let l2 = rest[l1 + 1..].iter().position(|&c| c == b'\n').ok_or_else(|| err("bad GLOBAL".into()))?;
                    let m = String::from_utf8_lossy(&rest[..l1]).into_owned();
                    let n = String::from_utf8_lossy(&rest[l1 + 1..l1 + 1 + l2]).into_owned();
                    pos += l1 + l2 + 2;
                    (m, n)
                } else {
                    match (stack.pop(), stack.pop()) {
                        (Some(Value::Str(n)), Some(Value::Str(m))) => (m, n),
                        _ => return Err(err("bad STACK_GLOBAL".into())),
                    }
                };
                if !allowed_global(&module, &name) {
                    return Err(err(format!("refusing to load global `{module}.{name}` (only tensors and containers are read; nothing is executed)")));
                }
                stack.push(Value::Global(module, name))
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(err("TUPLEn on short stack".into()));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items))
            }
            b'Q' => {
                let pid = stack.pop().ok_or_else(|| err("BINPERSID on empty stack".into()))?;
                let Value::Tuple(p) = pid else { return Err(err("persistent id is not a tuple".into())) };
                match p.as_slice() {
                    [Value::Str(tag), Value::Global(_, ty), Value::Str(key), _, _] if tag == "storage" => {
                        let kind = storage_kind(ty).ok_or_else(|| err(format!("unsupported storage type {ty}")))?;
                        stack.push(Value::Storage(kind, key.clone()))
                    }
                    _ => return Err(err("unsupported persistent id".into())),
                }
            }
            b'R' | 0x81 => {
                let args = stack.pop().ok_or_else(|| err("REDUCE on empty stack".into()))?;
                let func = stack.pop().ok_or_else(|| err("REDUCE on short stack".into()))?;
                let Value::Global(m, n) = func else { return Err(err("REDUCE of a non-global".into())) };
                let Value::Tuple(a) = args else { return Err(err("REDUCE arguments are not a tuple".into())) };
                let v = match n.as_str() {
                    _ if m.starts_with("__torch__.") => Value::Object(vec![]),
                    "OrderedDict" => Value::Dict(vec![]),
                    "_rebuild_tensor_v2" => match a.as_slice() {
                        [Value::Storage(kind, key), Value::Int(off), size, stride, ..] => Value::Tensor {
                            kind: *kind,
                            key: key.clone(),
                            offset: *off,
                            size: ints(size, "tensor size")?,
                            stride: ints(stride, "tensor stride")?,
                        },
                        _ => return Err(err("malformed _rebuild_tensor_v2 call".into())),
                    },
                    "_rebuild_parameter" => a.first().cloned().ok_or_else(|| err("empty _rebuild_parameter".into()))?,
                    _ => return Err(err(format!("cannot call {m}.{n}"))),
                };
                stack.push(v)
            }
            b'b' => {
                // BUILD: a TorchScript object's attributes; other dict state
                // (OrderedDict._metadata) is ignored.
                let state = stack.pop().ok_or_else(|| err("BUILD on empty stack".into()))?;
                if let (Some(Value::Object(fields)), Value::Dict(d)) = (stack.last_mut(), state) {
                    for (k, v) in d {
                        if let Value::Str(k) = k {
                            fields.push((k, v));
                        }
                    }
                }
            }
            b's' => {
                let v = stack.pop();
                let k = stack.pop();
                match (stack.last_mut(), k, v) {
                    (Some(Value::Dict(d)), Some(k), Some(v)) => d.push((k, v)),
                    _ => return Err(err("SETITEM outside a dict".into())),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Some(Value::Dict(d)) = stack.last_mut() else { return Err(err("SETITEMS outside a dict".into())) };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'a' => {
                let v = stack.pop().ok_or_else(|| err("APPEND on empty stack".into()))?;
                let Some(Value::List(l)) = stack.last_mut() else { return Err(err("APPEND outside a list".into())) };
                l.push(v);
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                let Some(Value::List(l)) = stack.last_mut() else { return Err(err("APPENDS outside a list".into())) };
                l.extend(items);
            }
            other => return Err(err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", pos - 1))),
        }
    }
}

fn flatten_object(prefix: &str, fields: Vec<(String, Value)>, out: &mut Vec<(Value, Value)>) {
    for (k, v) in fields {
        let path = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        match v {
            Value::Object(f) => flatten_object(&path, f, out),
            t @ Value::Tensor { .. } => out.push((Value::Str(path), t)),
            _ => {}
        }
    }
}

/// Reads every tensor of a `torch.save` zip file (or a TorchScript archive's module state) as `(name, tensor)` pairs in file order.
/// Wrappers are unwrapped (`state_dict`, `model` entries holding the tensors) and a leading
/// `module.` is stripped from every name.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::Invalid(format!("{origin}: not a PyTorch zip checkpoint ({e}); legacy (pre-1.6) and TorchScript files are not supported yet")))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("/data.pkl"))
        .ok_or_else(|| Error::Invalid(format!("{origin}: no data.pkl in the archive")))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(|e| Error::Invalid(format!("{origin}: {pkl_name}: {e}")))?;
    let top = unpickle(&pkl, &origin)?;
    // Unwrap {"state_dict": {...}} / {"model": {...}} wrappers; flatten TorchScript modules
    // into dotted attribute paths (`visual.conv1.weight`).
    let mut dict = match top {
        Value::Dict(d) => d,
        Value::Object(fields) => {
            let mut flat = vec![];
            flatten_object("", fields, &mut flat);
            flat
        }
        _ => return Err(Error::Invalid(format!("{origin}: the pickle is not a dict of tensors"))),
    };
    for wrapper in ["state_dict", "model"] {
        let inner = dict.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(s), Value::Dict(d)) if s == wrapper && d.iter().any(|(_, v)| matches!(v, Value::Tensor { .. })) => Some(d.clone()),
            _ => None,
        });
        if let Some(d) = inner {
            dict = d;
            break;
        }
    }
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in dict {
        let (Value::Str(name), Value::Tensor { kind, key, offset, size, stride }) = (k, v) else { continue };
        if !storages.contains_key(&key) {
            let entry = format!("{prefix}data/{key}");
            let mut bytes = Vec::new();
            zip.by_name(&entry)
                .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
                .map_err(|e| Error::Invalid(format!("{origin}: storage {entry}: {e}")))?;
            let elt = kind.elt_size_in_bytes();
            if bytes.len() % elt != 0 {
                return Err(Error::Invalid(format!("{origin}: storage {entry} is truncated")));
            }
            let t = Tensor::f_from_data_size(&bytes, &[(bytes.len() / elt) as i64], kind)?;
            storages.insert(key.clone(), t);
        }
        let st = &storages[&key];
        let need = offset + size.iter().zip(&stride).map(|(s, d)| (s - 1).max(0) * d).sum::<i64>() + 1;
        if size.iter().all(|&s| s > 0) && need > st.size()[0] {
            return Err(Error::Invalid(format!("{origin}: tensor {name} reaches past its storage ({need} > {})", st.size()[0])));
        }
        let t = st.f_as_strided(&size, &stride, offset)?.contiguous();
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        out.push((name, t));
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("{origin}: no tensors found")));
    }
    Ok(out)
}
