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

/// Index of a value in the [`Arena`].
type Id = usize;

/// A pickle value. Containers hold the ids of their items, so a memoised value pushed again
/// (`BINGET`) is the same object, as in Python: no copy is made, memory stays linear in the
/// size of the pickle, and dropping a deeply nested value is flat.
#[allow(dead_code)] // every pickle value is kept, even where only the tensors are used
#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(String, String),
    /// A storage: dtype and the key of its bytes in `data/`.
    Storage(Kind, String),
    /// A tensor view of a storage.
    Tensor {
        kind: Kind,
        key: String,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    },
    /// An inert TorchScript module object (`__torch__.*` class) and its attributes.
    Object(Vec<(String, Id)>),
}

/// All values of one pickle.
struct Arena {
    nodes: Vec<Node>,
}

impl Arena {
    fn push(&mut self, n: Node) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }
}

/// Stack marker (`MARK`); never a valid node id.
const MARK: Id = usize::MAX;

/// Largest `data.pkl` read (a ViT-L/14 state dict's pickle is about 100 KB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Deepest nesting of TorchScript module objects followed when collecting tensors.
pub const MAX_OBJECT_DEPTH: usize = 256;
/// Bytes of tensor data decoded per byte of checkpoint file at most (uncompressed zip members
/// need 1×; a deflated member cannot inflate beyond this ratio).
pub const MAX_INFLATION: u64 = 16;

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

fn ints(ar: &Arena, v: Id, what: &str) -> Result<Vec<i64>> {
    match &ar.nodes[v] {
        Node::Tuple(xs) | Node::List(xs) => xs
            .iter()
            .map(|&x| match ar.nodes[x] {
                Node::Int(i) => Ok(i),
                _ => Err(Error::Checkpoint(format!("pickle: {what} holds a non-integer"))),
            })
            .collect(),
        _ => Err(Error::Checkpoint(format!("pickle: {what} is not a tuple"))),
    }
}

/// Interprets a pickle (iteratively: no recursion on nesting); returns the arena and the id
/// of the top-level value.
fn unpickle(data: &[u8], origin: &str) -> Result<(Arena, Id)> {
    let err = |m: String| Error::Checkpoint(format!("{origin}: {m}"));
    let mut ar = Arena { nodes: Vec::new() };
    let mut stack: Vec<Id> = Vec::new();
    let mut memo: HashMap<u32, Id> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        let end = pos.checked_add(n).ok_or_else(|| Error::Checkpoint(format!("{origin}: truncated pickle")))?;
        let s = data.get(*pos..end).ok_or_else(|| Error::Checkpoint(format!("{origin}: truncated pickle")))?;
        *pos = end;
        Ok(s)
    };
    let pop_mark = |stack: &mut Vec<Id>| -> Result<Vec<Id>> {
        let m = stack.iter().rposition(|&v| v == MARK).ok_or_else(|| Error::Checkpoint(format!("{origin}: pickle MARK missing")))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    let pop = |stack: &mut Vec<Id>, what: &str| -> Result<Id> {
        match stack.pop() {
            Some(v) if v != MARK => Ok(v),
            _ => Err(Error::Checkpoint(format!("{origin}: {what} on an empty stack"))),
        }
    };
    let top = |stack: &Vec<Id>, what: &str| -> Result<Id> {
        match stack.last() {
            Some(&v) if v != MARK => Ok(v),
            _ => Err(Error::Checkpoint(format!("{origin}: {what} on an empty stack"))),
        }
    };
    loop {
        let op = take(&mut pos, 1)?[0];
        match op {
            0x80 => {
                take(&mut pos, 1)?;
            } // PROTO
            0x95 => {
                take(&mut pos, 8)?;
            } // FRAME
            b'.' => return Ok((ar, pop(&mut stack, "STOP")?)),
            b'}' => stack.push(ar.push(Node::Dict(vec![]))),
            b']' => stack.push(ar.push(Node::List(vec![]))),
            b')' => stack.push(ar.push(Node::Tuple(vec![]))),
            b'(' => stack.push(MARK),
            b'N' => stack.push(ar.push(Node::None)),
            0x88 => stack.push(ar.push(Node::Bool(true))),
            0x89 => stack.push(ar.push(Node::Bool(false))),
            b'K' => {
                let v = take(&mut pos, 1)?[0] as i64;
                stack.push(ar.push(Node::Int(v)))
            }
            b'M' => {
                let b = take(&mut pos, 2)?;
                let v = u16::from_le_bytes([b[0], b[1]]) as i64;
                stack.push(ar.push(Node::Int(v)))
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                let v = i32::from_le_bytes(b.try_into().expect("take(4) returned 4 bytes")) as i64;
                stack.push(ar.push(Node::Int(v)))
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
                stack.push(ar.push(Node::Int(v)))
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                let v = f64::from_be_bytes(b.try_into().expect("take(8) returned 8 bytes"));
                stack.push(ar.push(Node::Float(v)))
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("take(4) returned 4 bytes")) as usize,
                    0x8d => usize::try_from(u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("take(8) returned 8 bytes")))
                        .unwrap_or(usize::MAX),
                    _ => take(&mut pos, 1)?[0] as usize,
                };
                let s = String::from_utf8_lossy(take(&mut pos, n)?).into_owned();
                stack.push(ar.push(Node::Str(s)))
            }
            b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'q' => take(&mut pos, 1)?[0] as u32,
                    b'r' => u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("take(4) returned 4 bytes")),
                    _ => memo.len() as u32,
                };
                memo.insert(i, top(&stack, "memo put")?);
            }
            b'h' | b'j' => {
                let i = if op == b'h' {
                    take(&mut pos, 1)?[0] as u32
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("take(4) returned 4 bytes"))
                };
                stack.push(*memo.get(&i).ok_or_else(|| err(format!("memo {i} missing")))?)
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
                    let n = pop(&mut stack, "STACK_GLOBAL")?;
                    let m = pop(&mut stack, "STACK_GLOBAL")?;
                    match (&ar.nodes[m], &ar.nodes[n]) {
                        (Node::Str(m), Node::Str(n)) => (m.clone(), n.clone()),
                        _ => return Err(err("bad STACK_GLOBAL".into())),
                    }
                };
                if !allowed_global(&module, &name) {
                    return Err(err(format!(
                        "refusing to load global `{module}.{name}` (only tensors and containers are read; nothing is executed)"
                    )));
                }
                stack.push(ar.push(Node::Global(module, name)))
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(ar.push(Node::Tuple(items)))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n || stack[stack.len() - n..].contains(&MARK) {
                    return Err(err("TUPLEn on short stack".into()));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(ar.push(Node::Tuple(items)))
            }
            b'Q' => {
                let pid = pop(&mut stack, "BINPERSID")?;
                let Node::Tuple(p) = &ar.nodes[pid] else { return Err(err("persistent id is not a tuple".into())) };
                let node = match p.iter().map(|&i| &ar.nodes[i]).collect::<Vec<_>>().as_slice() {
                    [Node::Str(tag), Node::Global(_, ty), Node::Str(key), _, _] if tag == "storage" => {
                        let kind = storage_kind(ty).ok_or_else(|| err(format!("unsupported storage type {ty}")))?;
                        Node::Storage(kind, key.clone())
                    }
                    _ => return Err(err("unsupported persistent id".into())),
                };
                stack.push(ar.push(node))
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack, "REDUCE")?;
                let func = pop(&mut stack, "REDUCE")?;
                let Node::Global(m, n) = &ar.nodes[func] else { return Err(err("REDUCE of a non-global".into())) };
                let Node::Tuple(a) = &ar.nodes[args] else { return Err(err("REDUCE arguments are not a tuple".into())) };
                let (m, n, a) = (m.clone(), n.clone(), a.clone());
                let v = match n.as_str() {
                    _ if m.starts_with("__torch__.") => ar.push(Node::Object(vec![])),
                    "OrderedDict" => ar.push(Node::Dict(vec![])),
                    "_rebuild_tensor_v2" => {
                        let [storage, off, size, stride, ..] = a.as_slice() else {
                            return Err(err("malformed _rebuild_tensor_v2 call".into()));
                        };
                        let (Node::Storage(kind, key), Node::Int(offset)) = (&ar.nodes[*storage], &ar.nodes[*off]) else {
                            return Err(err("malformed _rebuild_tensor_v2 call".into()));
                        };
                        let t = Node::Tensor {
                            kind: *kind,
                            key: key.clone(),
                            offset: *offset,
                            size: ints(&ar, *size, "tensor size")?,
                            stride: ints(&ar, *stride, "tensor stride")?,
                        };
                        ar.push(t)
                    }
                    "_rebuild_parameter" => *a.first().ok_or_else(|| err("empty _rebuild_parameter".into()))?,
                    _ => return Err(err(format!("cannot call {m}.{n}"))),
                };
                stack.push(v)
            }
            b'b' => {
                // BUILD: a TorchScript object's attributes; other dict state
                // (OrderedDict._metadata) is ignored.
                let state = pop(&mut stack, "BUILD")?;
                let obj = top(&stack, "BUILD")?;
                if let (Node::Object(_), Node::Dict(d)) = (&ar.nodes[obj], &ar.nodes[state]) {
                    let fields: Vec<(String, Id)> =
                        d.iter().filter_map(|&(k, v)| if let Node::Str(k) = &ar.nodes[k] { Some((k.clone(), v)) } else { None }).collect();
                    if let Node::Object(f) = &mut ar.nodes[obj] {
                        f.extend(fields);
                    }
                }
            }
            b's' => {
                let v = pop(&mut stack, "SETITEM")?;
                let k = pop(&mut stack, "SETITEM")?;
                let Node::Dict(d) = &mut ar.nodes[top(&stack, "SETITEM")?] else { return Err(err("SETITEM outside a dict".into())) };
                d.push((k, v));
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Node::Dict(d) = &mut ar.nodes[top(&stack, "SETITEMS")?] else { return Err(err("SETITEMS outside a dict".into())) };
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
            }
            b'a' => {
                let v = pop(&mut stack, "APPEND")?;
                let Node::List(l) = &mut ar.nodes[top(&stack, "APPEND")?] else { return Err(err("APPEND outside a list".into())) };
                l.push(v);
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                let Node::List(l) = &mut ar.nodes[top(&stack, "APPENDS")?] else { return Err(err("APPENDS outside a list".into())) };
                l.extend(items);
            }
            other => return Err(err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", pos - 1))),
        }
    }
}

/// The tensors under a TorchScript module object, named by dotted attribute path. Iterative,
/// depth-bounded, and each object is visited once (a shared or cyclic object graph cannot
/// loop or blow up).
fn flatten_object(ar: &Arena, root: Id, origin: &str) -> Result<Vec<(String, Id)>> {
    let mut out = vec![];
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(String::new(), root, 0usize)];
    while let Some((path, id, depth)) = todo.pop() {
        match &ar.nodes[id] {
            Node::Tensor { .. } => out.push((path, id)),
            Node::Object(fields) => {
                if depth > MAX_OBJECT_DEPTH {
                    return Err(Error::Checkpoint(format!("{origin}: module objects nest deeper than {MAX_OBJECT_DEPTH}")));
                }
                if !seen.insert(id) {
                    continue;
                }
                // Reversed pushes pop in field order: tensors come out in file order.
                for (k, v) in fields.iter().rev() {
                    let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    todo.push((child, *v, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `offset + Σ (size_i − 1)·stride_i + 1` elements of storage a view needs, and its element
/// count; `None` when a value is negative or the arithmetic overflows.
fn view_extent(offset: i64, size: &[i64], stride: &[i64]) -> Option<(i64, i64)> {
    if offset < 0 || size.len() != stride.len() || size.iter().chain(stride).any(|&x| x < 0) {
        return None;
    }
    let numel = size.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s))?;
    if numel == 0 {
        return Some((0, 0));
    }
    let reach = size.iter().zip(stride).try_fold(offset, |acc, (&s, &d)| acc.checked_add((s - 1).checked_mul(d)?))?;
    Some((reach.checked_add(1)?, numel))
}

/// Reads every tensor of a `torch.save` zip file (or a TorchScript archive's module state) as
/// `(name, tensor)` pairs in file order. Wrappers are unwrapped (`state_dict`, `model` entries
/// holding the tensors) and a leading `module.` is stripped from every name.
///
/// Limits (hostile files are refused, not allocated): `data.pkl` at most
/// [`MAX_PICKLE_BYTES`]; tensor data decoded at most [`MAX_INFLATION`] × the file size in all;
/// every size, stride and offset checked (non-negative, no overflow, inside its storage);
/// object graphs at most [`MAX_OBJECT_DEPTH`] deep.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut budget = file_len.saturating_mul(MAX_INFLATION);
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::Checkpoint(format!(
            "{origin}: not a PyTorch zip checkpoint or TorchScript archive ({e}); legacy (pre-1.6) torch.save files are not supported"
        ))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("/data.pkl"))
        .ok_or_else(|| Error::Checkpoint(format!("{origin}: no data.pkl in the archive")))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_member(&mut zip, &pkl_name, MAX_PICKLE_BYTES.min(budget), &origin)?;
    budget = budget.saturating_sub(pkl.len() as u64);
    let (ar, top) = unpickle(&pkl, &origin)?;
    // Unwrap {"state_dict": {...}} / {"model": {...}} wrappers; flatten TorchScript modules
    // into dotted attribute paths (`visual.conv1.weight`).
    let mut entries: Vec<(String, Id)> = match &ar.nodes[top] {
        Node::Dict(d) => d.iter().filter_map(|&(k, v)| if let Node::Str(k) = &ar.nodes[k] { Some((k.clone(), v)) } else { None }).collect(),
        Node::Object(_) => flatten_object(&ar, top, &origin)?,
        _ => return Err(Error::Checkpoint(format!("{origin}: the pickle is not a dict of tensors"))),
    };
    for wrapper in ["state_dict", "model"] {
        let inner = entries.iter().find_map(|(k, v)| match &ar.nodes[*v] {
            Node::Dict(d) if k == wrapper && d.iter().any(|(_, v)| matches!(ar.nodes[*v], Node::Tensor { .. })) => Some(d.clone()),
            _ => None,
        });
        if let Some(d) = inner {
            entries = d.iter().filter_map(|&(k, v)| if let Node::Str(k) = &ar.nodes[k] { Some((k.clone(), v)) } else { None }).collect();
            break;
        }
    }
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::new();
    for (name, v) in entries {
        let Node::Tensor { kind, key, offset, size, stride } = &ar.nodes[v] else { continue };
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            let bytes = read_member(&mut zip, &entry, budget, &origin)?;
            budget = budget.saturating_sub(bytes.len() as u64);
            let elt = kind.elt_size_in_bytes();
            if bytes.len() % elt != 0 {
                return Err(Error::Checkpoint(format!("{origin}: storage {entry} is truncated")));
            }
            let t = Tensor::f_from_data_size(&bytes, &[(bytes.len() / elt) as i64], *kind)?;
            storages.insert(key.clone(), t);
        }
        let st = &storages[key];
        let (need, numel) = view_extent(*offset, size, stride).ok_or_else(|| {
            Error::Checkpoint(format!("{origin}: tensor {name} has an invalid size {size:?} / stride {stride:?} / offset {offset}"))
        })?;
        if numel > 0 && need > st.size()[0] {
            return Err(Error::Checkpoint(format!("{origin}: tensor {name} reaches past its storage ({need} > {})", st.size()[0])));
        }
        let bytes = (numel as u64).saturating_mul(kind.elt_size_in_bytes() as u64);
        if bytes > budget {
            return Err(Error::Checkpoint(format!(
                "{origin}: tensor {name} {size:?} would decode to {bytes} bytes, more than the file can hold"
            )));
        }
        budget -= bytes.min(budget);
        let t = st.f_as_strided(size, stride, *offset)?.contiguous();
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        out.push((name, t));
    }
    if out.is_empty() {
        return Err(Error::Checkpoint(format!("{origin}: no tensors found")));
    }
    Ok(out)
}

/// One archive member's bytes, refusing members whose size exceeds `limit`.
fn read_member(zip: &mut zip::ZipArchive<std::fs::File>, name: &str, limit: u64, origin: &str) -> Result<Vec<u8>> {
    let f = zip.by_name(name).map_err(|e| Error::Checkpoint(format!("{origin}: {name}: {e}")))?;
    if f.size() > limit {
        return Err(Error::Checkpoint(format!("{origin}: {name} declares {} bytes, more than the limit of {limit}", f.size())));
    }
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::Checkpoint(format!("{origin}: {name}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Checkpoint(format!("{origin}: {name} inflates past the limit of {limit} bytes")));
    }
    Ok(bytes)
}
