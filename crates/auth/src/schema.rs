//! Record kinds and their schemas.

/// A field of a record kind's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name.
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// Whether a record must have it.
    pub required: bool,
    /// What it is for.
    pub doc: &'static str,
}

/// The type of a schema field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    Str,
    /// Bytes.
    Bytes,
    /// An integer.
    Int,
}

/// A kind of record a method stores, at `(nil, "auth", METHOD, KIND, NAME)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `user` or `group`.
    pub name: &'static str,
    /// The fields of the method data a client sends to create one.
    pub fields: &'static [Field],
}

/// A user record with no method data (the schema is empty).
pub const USER: Kind = Kind {
    name: "user",
    fields: &[],
};

/// A group record with no method data.
pub const GROUP: Kind = Kind {
    name: "group",
    fields: &[],
};
