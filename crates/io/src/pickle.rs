//! A small, defensive pickle virtual machine: just enough of protocols 2–4 to read the
//! `data.pkl` that `torch.save` writes.
//!
//! Compared with `candle_core::pickle::Stack` it shares memoised objects instead of deep-copying
//! them (a crafted file cannot blow up memory through the memo), bounds nesting depth (dropping a
//! value can never overflow the native stack), checks every length against the remaining input
//! before allocating, and reports an unsupported opcode or a truncated stream as a typed error.
//!
//! Instance state set by `BUILD` is discarded: it never carries tensors in a checkpoint (for a
//! torch `OrderedDict` it is the `_metadata` attribute) and nothing here needs it.

use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of containers accepted; real checkpoints stay below 10.
const MAX_DEPTH: u32 = 100;

/// Why a pickle stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// An opcode this reader does not implement (or a byte that is no opcode at all).
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its position in the stream.
        offset: usize,
    },
    /// The stream ended inside an instruction or before `STOP`.
    #[error("pickle stream ends at byte {offset} before its STOP opcode (truncated?)")]
    UnexpectedEnd {
        /// The length of the stream.
        offset: usize,
    },
    /// A well-formed opcode whose operands make no sense (empty stack, missing memo entry, ...).
    #[error("malformed pickle at byte {offset}: {message}")]
    Malformed {
        /// Position of the offending opcode.
        offset: usize,
        /// What is wrong.
        message: String,
    },
}

/// A shared, immutable pickle object.
pub type Obj = Rc<Node>;

/// A pickle object with its nesting depth (leaves have depth 0).
#[derive(Debug, Clone)]
pub struct Node {
    /// The object itself.
    pub value: Value,
    depth: u32,
}

/// The objects a torch checkpoint pickle is made of.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// `True` or `False` (which one is not needed to find tensors).
    Bool,
    /// Any integer that fits in 64 bits.
    Int(i64),
    /// A float (its value is not needed to find tensors).
    Float,
    /// A `str`.
    Str(String),
    /// A tuple.
    Tuple(Vec<Obj>),
    /// A list.
    List(Vec<Obj>),
    /// A dict (or `collections.OrderedDict`), in insertion order.
    Dict(Vec<(Obj, Obj)>),
    /// A global reference `module.name` (a class or a function).
    Global {
        /// The module, e.g. `torch._utils`.
        module: String,
        /// The name, e.g. `_rebuild_tensor_v2`.
        name: String,
    },
    /// `callable(*args)`, left unevaluated (`REDUCE` and `NEWOBJ`).
    Call {
        /// What is called, usually a [`Value::Global`].
        callable: Obj,
        /// The argument tuple.
        args: Obj,
    },
    /// A persistent id: in torch checkpoints, the description of a storage.
    PersistentId(Obj),
}

impl Node {
    /// Wraps `value`, refusing nesting deeper than [`MAX_DEPTH`].
    fn new(value: Value) -> Result<Obj, String> {
        let child_depth = match &value {
            Value::Tuple(items) | Value::List(items) => items.iter().map(|c| c.depth).max(),
            Value::Dict(pairs) => pairs.iter().map(|(k, v)| k.depth.max(v.depth)).max(),
            Value::Call { callable, args } => Some(callable.depth.max(args.depth)),
            Value::PersistentId(id) => Some(id.depth),
            _ => None,
        };
        let depth = child_depth.map_or(0, |d| d + 1);
        if depth > MAX_DEPTH {
            return Err(format!("objects nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(Rc::new(Node { value, depth }))
    }

    /// The string inside a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside a [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The elements of a [`Value::Tuple`].
    pub fn as_tuple(&self) -> Option<&[Obj]> {
        match &self.value {
            Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The elements of a [`Value::List`].
    pub fn as_list(&self) -> Option<&[Obj]> {
        match &self.value {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The entries of a [`Value::Dict`].
    pub fn as_dict(&self) -> Option<&[(Obj, Obj)]> {
        match &self.value {
            Value::Dict(items) => Some(items),
            _ => None,
        }
    }

    /// `(module, name)` of a [`Value::Global`].
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match &self.value {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }
}

impl Value {
    /// A short description of the object's type, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global { module, name } => format!("the global {module}.{name}"),
            Value::Call { callable, .. } => match callable.as_global() {
                Some((module, name)) => format!("a call of {module}.{name}"),
                None => "a call".into(),
            },
            Value::PersistentId(_) => "a persistent id".into(),
        }
    }
}

/// Runs the pickle program in `data` and returns the object it builds.
///
/// # Errors
/// [`PickleError`] for an unsupported opcode, a truncated stream, or inconsistent operands.
pub fn parse(data: &[u8]) -> Result<Obj, PickleError> {
    Machine::new(data).run()
}

/// Parses the pickle at the start of `data` and returns it with the number of bytes it took
/// (its `STOP` included): the legacy `torch.save` format writes several pickles in a row.
pub fn parse_prefix(data: &[u8]) -> Result<(Obj, usize), PickleError> {
    let mut m = Machine::new(data);
    let obj = m.run_until_stop()?;
    Ok((obj, m.pos))
}

/// The pickle VM state: a cursor over the input, the stack, the mark positions and the memo.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Position of the opcode being executed, for error messages.
    op_pos: usize,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u64, Obj>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, op_pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn malformed(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed { offset: self.op_pos, message: message.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or(PickleError::UnexpectedEnd { offset: self.data.len() })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A length operand, checked against the bytes that remain before anything is allocated.
    fn length(&mut self, len: u64) -> Result<usize, PickleError> {
        let remaining = self.data.len() - self.pos;
        match usize::try_from(len) {
            Ok(len) if len <= remaining => Ok(len),
            _ => Err(PickleError::UnexpectedEnd { offset: self.data.len() }),
        }
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String, PickleError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed("string is not valid UTF-8"))
    }

    /// A text line (for `GLOBAL`), without its `\n`.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let len =
            rest.iter().position(|&b| b == b'\n').ok_or(PickleError::UnexpectedEnd { offset: self.data.len() })?;
        let line = self.take(len)?;
        self.pos += 1;
        self.utf8(line)
    }

    fn push(&mut self, value: Value) -> Result<(), PickleError> {
        let obj = Node::new(value).map_err(|m| self.malformed(m))?;
        self.stack.push(obj);
        Ok(())
    }

    fn pop(&mut self) -> Result<Obj, PickleError> {
        // Objects below the innermost mark belong to an enclosing frame.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_str(&mut self) -> Result<String, PickleError> {
        let obj = self.pop()?;
        match obj.as_str() {
            Some(s) => Ok(s.to_owned()),
            None => Err(self.malformed(format!("expected a str, found {}", obj.value.kind()))),
        }
    }

    /// Everything pushed since the last `MARK`, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Obj>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let obj = self.memo.get(&key).cloned();
        let obj = obj.ok_or_else(|| self.malformed(format!("memo entry {key} is not defined")))?;
        self.stack.push(obj);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let top = self.stack.last().cloned().ok_or_else(|| self.malformed("stack underflow"))?;
        self.memo.insert(key, top);
        Ok(())
    }

    /// Adds `items` to the list or dict on top of the stack (`APPEND(S)`, `SETITEM(S)`).
    fn extend_top(&mut self, items: Vec<Obj>) -> Result<(), PickleError> {
        let depth = 1 + items.iter().map(|c| c.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.malformed(format!("objects nested deeper than {MAX_DEPTH} levels")));
        }
        let mut node = Rc::unwrap_or_clone(self.pop()?);
        node.value = match node.value {
            Value::List(mut list) => {
                list.extend(items);
                Value::List(list)
            }
            Value::Dict(mut dict) => {
                dict.extend(self.pairs(items)?);
                Value::Dict(dict)
            }
            other => return Err(self.malformed(format!("cannot add items to {}", other.kind()))),
        };
        node.depth = node.depth.max(depth);
        self.stack.push(Rc::new(node));
        Ok(())
    }

    /// `[k0, v0, k1, v1, ...]` as key-value pairs.
    fn pairs(&self, items: Vec<Obj>) -> Result<Vec<(Obj, Obj)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        let mut items = items.into_iter();
        let mut pairs = Vec::with_capacity(items.len() / 2);
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    /// `REDUCE` / `NEWOBJ`: `collections.OrderedDict()` becomes an empty dict, anything else
    /// stays an unevaluated call.
    fn call(&mut self) -> Result<(), PickleError> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let ordered_dict = matches!(callable.as_global(), Some(("collections", "OrderedDict")))
            && args.as_tuple().is_some_and(<[Obj]>::is_empty);
        if ordered_dict { self.push(Value::Dict(Vec::new())) } else { self.push(Value::Call { callable, args }) }
    }

    fn run(mut self) -> Result<Obj, PickleError> {
        self.run_until_stop()
    }

    fn run_until_stop(&mut self) -> Result<Obj, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let version = self.u8()?;
                    if version > 5 {
                        return Err(self.malformed(format!("unknown pickle protocol {version}")));
                    }
                }
                // FRAME: the frame length is only a read-ahead hint.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // NONE, NEWTRUE, NEWFALSE
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()))?;
                }
                // LONG1: little-endian two's complement of n bytes.
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(self.malformed(format!("{n}-byte integer does not fit in 64 bits")));
                    }
                    let bytes = self.take(n)?;
                    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
                    let mut buf = if negative { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                // BINFLOAT
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c | b'X' | 0x8d => {
                    let len = match op {
                        0x8c => u64::from(self.u8()?),
                        b'X' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let len = self.length(len)?;
                    let bytes = self.take(len)?;
                    let s = self.utf8(bytes)?;
                    self.push(Value::Str(s))?;
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global { module, name })?;
                }
                0x93 => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    self.push(Value::Global { module, name })?;
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?;
                }
                // EMPTY_LIST, LIST, APPEND, APPENDS
                b']' => self.push(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                // EMPTY_DICT, DICT, SETITEM, SETITEMS
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Value::Dict(pairs))?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_top(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                // BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET
                b'q' => {
                    let key = self.u8()?;
                    self.memo_put(key.into())?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(key.into())?;
                }
                0x94 => self.memo_put(self.memo.len() as u64)?,
                b'h' => {
                    let key = self.u8()?;
                    self.memo_get(key.into())?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.memo_get(key.into())?;
                }
                // BINPERSID
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::PersistentId(id))?;
                }
                // REDUCE, NEWOBJ
                b'R' | 0x81 => self.call()?,
                // BUILD: the state is dropped (see the module documentation).
                b'b' => {
                    self.pop()?;
                    if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
                        return Err(self.malformed("BUILD without an object"));
                    }
                }
                opcode => {
                    return Err(PickleError::UnsupportedOpcode { opcode, offset: self.op_pos });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict_entry<'a>(obj: &'a Obj, key: &str) -> &'a Obj {
        let dict = obj.as_dict().unwrap();
        &dict.iter().find(|(k, _)| k.as_str() == Some(key)).unwrap().1
    }

    #[test]
    fn parses_protocol_2_dict_of_tuple() {
        // python: pickle.dumps({'a': (1, -2.5, 'x'), 'b': [True, None]}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01G\xc0\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x02\x87q\x03X\x01\x00\x00\x00bq\x04]q\x05(\x88Neu.";
        let obj = parse(data).unwrap();
        let a = dict_entry(&obj, "a").as_tuple().unwrap();
        assert_eq!(a[0].as_int(), Some(1));
        assert!(matches!(a[1].value, Value::Float));
        assert_eq!(a[2].as_str(), Some("x"));
        let b = dict_entry(&obj, "b");
        assert!(matches!(&b.value, Value::List(items) if items.len() == 2));
    }

    #[test]
    fn long1_is_sign_extended() {
        // python: pickle.loads(b'\x80\x02\x8a\x02\xd4\xfe.') == -300
        let obj = parse(b"\x80\x02\x8a\x02\xd4\xfe.").unwrap();
        assert_eq!(obj.as_int(), Some(-300));
        // python: pickle.dumps(2**40, protocol=2)
        let obj = parse(b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01.").unwrap();
        assert_eq!(obj.as_int(), Some(1 << 40));
    }

    #[test]
    fn ordered_dict_reduce_becomes_dict_and_build_state_is_dropped() {
        // python: d = OrderedDict(k=1); d._metadata = {}; pickle.dumps(d, protocol=2)
        // (hand-trimmed: GLOBAL, EMPTY_TUPLE, REDUCE, SETITEM, EMPTY_DICT state, BUILD)
        let data = b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00kK\x01s}b.";
        let obj = parse(data).unwrap();
        let dict = obj.as_dict().unwrap();
        assert_eq!(dict.len(), 1);
        assert_eq!(dict[0].1.as_int(), Some(1));
    }

    #[test]
    fn memo_shares_objects() {
        // [x, x] where x = 'abc' memoised once.
        let data = b"\x80\x02](X\x03\x00\x00\x00abcq\x00h\x00e.";
        let obj = parse(data).unwrap();
        let Value::List(items) = &obj.value else { panic!("not a list") };
        assert!(Rc::ptr_eq(&items[0], &items[1]));
    }

    #[test]
    fn unsupported_opcode_is_reported_with_its_offset() {
        let err = parse(b"\x80\x02S'abc'\n.").unwrap_err();
        assert!(matches!(err, PickleError::UnsupportedOpcode { opcode: b'S', offset: 2 }), "{err}");
    }

    #[test]
    fn truncation_is_reported() {
        let err = parse(b"\x80\x02X\xff\x00\x00\x00abc").unwrap_err();
        assert!(matches!(err, PickleError::UnexpectedEnd { offset: 10 }), "{err}");
        let err = parse(b"\x80\x02K\x01").unwrap_err();
        assert!(matches!(err, PickleError::UnexpectedEnd { .. }), "{err}");
    }

    #[test]
    fn malformed_operands_are_errors() {
        for (data, what) in [
            (&b"\x80\x02."[..], "stack underflow"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02K\x01K\x02a.", "cannot add items"),
            (b"\x80\x02(K\x01t(.", "stack underflow"),
            (b"\x80\x06.", "protocol 6"),
        ] {
            let err = parse(data).unwrap_err().to_string();
            assert!(err.contains(what), "{data:?}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut data = b"\x80\x02N".to_vec();
        data.extend(std::iter::repeat_n(0x85u8, 10_000));
        data.push(b'.');
        let err = parse(&data).unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }
}
