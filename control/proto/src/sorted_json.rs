//! Compact JSON with every object's members in alphabetical order, written straight
//! from a `Serialize` value.
//!
//! Results use members in alphabetical order (docs/control-protocol.md): that is what
//! `serde_json::to_value` gives (its maps are sorted), at the price of a `String` per
//! key and a tree node per member. A dump of a million flows is written through
//! [`to_writer_sorted`] instead, which gives the same bytes as
//! `serde_json::to_writer(w, &serde_json::to_value(v)?)`: each object's members are
//! written to one scratch buffer as they come, then copied out sorted by key. Scalars
//! and strings are written by `serde_json` itself, so numbers and escapes are its own.

use std::borrow::Cow;

use serde::ser::{self, Impossible, Serialize};

/// Appends `value` to `out` as compact JSON with sorted object members. On error
/// `out` may hold part of the value.
pub fn to_writer_sorted<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    value.serialize(Sorted { out })
}

/// Why a value could not be written (a map key that is not a string, or what the
/// value's own `Serialize` reported).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

/// Writes one value into `out`.
struct Sorted<'a> {
    out: &'a mut Vec<u8>,
}

fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), Error> {
    serde_json::to_writer(out, v).map_err(Error::from)
}

impl<'a> ser::Serializer for Sorted<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // As a json value would hold it: a 64-bit number, or an error.
        let v = i64::try_from(v).map_err(|_| Error("number out of range".into()))?;
        scalar(self.out, &v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        let v = u64::try_from(v).map_err(|_| Error("number out of range".into()))?;
        scalar(self.out, &v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // A json value holds floats as f64.
        scalar(self.out, &f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        scalar(self.out, &v)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        scalar(self.out, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        scalar(self.out, v)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        scalar(self.out, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.push(b':');
        v.serialize(Sorted { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Error> {
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.extend_from_slice(b":[");
        Ok(Seq {
            out: self.out,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, false))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, false))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'a>, Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.push(b':');
        Ok(Object::new(self.out, true))
    }
}

/// An array being written (inside `{"variant":` for a tuple variant).
struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
        v.serialize(Sorted { out: self.out })
    }

    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.element(v)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.element(v)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.element(v)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.element(v)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// An object being gathered: its members' values in `scratch` (each `values[i]` a
/// range of it), written out sorted by key at the end. A later member with the key of
/// an earlier one replaces it, as in a json map.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    scratch: Vec<u8>,
    members: Vec<(Cow<'static, str>, std::ops::Range<usize>)>,
    /// A map's key waiting for its value.
    key: Option<String>,
    /// Inside `{"variant":` (closed with a second brace).
    variant: bool,
}

/// An object's buffers, kept for the next object once it is written: a dump writes
/// millions of small objects, which would otherwise each allocate (and free) two.
type Buffers = (Vec<u8>, Vec<(Cow<'static, str>, std::ops::Range<usize>)>);

thread_local! {
    /// Buffers of written objects (at most [`POOL_BUFFERS`], none larger than
    /// [`POOL_BYTES`]), one pool per thread.
    static POOL: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most buffer pairs a thread keeps: deeper nesting than this allocates.
const POOL_BUFFERS: usize = 16;
/// A scratch buffer larger than this is freed rather than kept.
const POOL_BYTES: usize = 64 * 1024;

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, variant: bool) -> Object<'a> {
        let (scratch, members) = POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        Object {
            out,
            scratch,
            members,
            key: None,
            variant,
        }
    }

    /// Adds a member; `dedup` for a map, whose keys may repeat (a struct's do not).
    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        v: &T,
        dedup: bool,
    ) -> Result<(), Error> {
        let start = self.scratch.len();
        v.serialize(Sorted {
            out: &mut self.scratch,
        })?;
        let range = start..self.scratch.len();
        match dedup
            .then(|| self.members.iter_mut().find(|(k, _)| *k == key))
            .flatten()
        {
            Some(m) => m.1 = range,
            None => self.members.push((key, range)),
        }
        Ok(())
    }

    fn close(mut self) -> Result<(), Error> {
        self.members.sort_by(|a, b| a.0.cmp(&b.0));
        self.out.push(b'{');
        for (i, (k, r)) in self.members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            scalar(self.out, k.as_ref())?;
            self.out.push(b':');
            self.out.extend_from_slice(&self.scratch[r.clone()]);
        }
        self.out.push(b'}');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl Drop for Object<'_> {
    /// Gives the buffers back to the pool, emptied (also when writing failed).
    fn drop(&mut self) {
        if self.scratch.capacity() > POOL_BYTES {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut members = std::mem::take(&mut self.members);
        scratch.clear();
        members.clear();
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_BUFFERS {
                p.push((scratch, members));
            }
        });
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeyString)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("map value without a key".into()))?;
        self.member(Cow::Owned(key), v, true)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.member(Cow::Borrowed(key), v, false)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        self.member(Cow::Borrowed(key), v, false)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// A map key as a json value would take it: strings, and numbers and booleans as their
/// text.
struct KeyString;

impl ser::Serializer for KeyString {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    fn serialize_bool(self, v: bool) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _: f32) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_f64(self, _: f64) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<String, Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Error> {
        Err(key_error())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_error())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_error())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_error())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_error())
    }
}

fn key_error() -> Error {
    Error("key must be a string".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::HashMap;

    fn via_value<T: Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(&serde_json::to_value(v).unwrap()).unwrap()
    }

    fn sorted<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        to_writer_sorted(&mut out, v).unwrap();
        out
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum E {
        Unit,
        New(u32),
        Tuple(u8, String),
        Struct { zeta: i64, alpha: Option<u8> },
    }

    #[derive(Serialize)]
    struct S {
        zulu: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        alpha: Vec<E>,
        mid: (bool, f64, char),
        #[serde(rename = "Upper")]
        upper: HashMap<String, u8>,
        text: String,
        nested: Option<Box<S>>,
    }

    #[test]
    fn the_same_bytes_as_through_a_json_value() {
        let inner = S {
            zulu: u64::MAX,
            skipped: None,
            alpha: vec![E::Unit],
            mid: (false, -0.5, '\u{1f600}'),
            upper: HashMap::new(),
            text: "tab\t\"quote\" \u{7f} é".into(),
            nested: None,
        };
        let s = S {
            zulu: 1,
            skipped: Some(3),
            alpha: vec![
                E::Unit,
                E::New(7),
                E::Tuple(1, "x".into()),
                E::Struct {
                    zeta: -1,
                    alpha: None,
                },
            ],
            mid: (true, 1e300, 'a'),
            upper: [
                ("b".to_string(), 2),
                ("a".to_string(), 1),
                ("A".to_string(), 0),
            ]
            .into_iter()
            .collect(),
            text: String::new(),
            nested: Some(Box::new(inner)),
        };
        assert_eq!(
            String::from_utf8(sorted(&s)).unwrap(),
            String::from_utf8(via_value(&s)).unwrap()
        );
    }

    #[test]
    fn flows_are_written_as_through_a_json_value() {
        let text = "cookie=0x5,table=3,priority=7,idle_timeout=9,in_port=2,arp,arp_op=1,arp_tpa=198.19.1.1,dl_src=02:00:00:00:00:01/ff:ff:ff:00:00:00,reg3=0x5/0xff actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:01->eth_src,load:0x2->NXM_OF_ARP_OP[],set_field:198.19.1.1->arp_spa,resubmit(,5),set_field:0x1/0xff->reg0,dec_ttl,in_port,output:4";
        let flow = weft_flow::parse_flow(text).unwrap();
        let stats = crate::FlowStats {
            flow,
            packets: 1,
            bytes: 2,
            duration_ms: 3,
            idle_age_ms: 4,
        };
        assert_eq!(
            String::from_utf8(sorted(&stats)).unwrap(),
            String::from_utf8(via_value(&stats)).unwrap()
        );
    }

    #[test]
    fn reused_buffers_leave_nothing_behind() {
        // Objects written one after another on a thread reuse the buffers of the ones
        // before, also of one whose writing failed half-way (a key that is no string).
        let flow = weft_flow::parse_flow(
            "cookie=0x5,table=3,tcp,nw_src=198.19.0.0/16,tp_dst=80 actions=set_field:0x1->reg0,output:4",
        )
        .unwrap();
        let stats = crate::FlowStats {
            flow,
            packets: 1,
            bytes: 2,
            duration_ms: 3,
            idle_age_ms: 4,
        };
        let want = via_value(&stats);
        let bad: HashMap<Vec<u8>, S> = [(
            vec![1],
            S {
                zulu: 9,
                skipped: None,
                alpha: vec![],
                mid: (true, 0.0, 'z'),
                upper: [("q".to_string(), 1)].into_iter().collect(),
                text: "left over".into(),
                nested: None,
            },
        )]
        .into_iter()
        .collect();
        for _ in 0..3 {
            assert_eq!(sorted(&stats), want);
            let mut out = Vec::new();
            assert!(to_writer_sorted(&mut out, &[&bad]).is_err());
            let mut out = b"kept".to_vec();
            to_writer_sorted(&mut out, &stats).unwrap();
            assert_eq!(out[..4], *b"kept");
            assert_eq!(out[4..], want[..]);
        }
    }
}
