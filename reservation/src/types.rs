//! The `workload_types!` macro: from the one list of workload types (in
//! `workloads.rs`), each type's wire name and `data` struct, it generates
//! [`WorkloadType`](crate::WorkloadType) (variants, `ALL`, `as_str`,
//! `order`, `Display`, `FromStr`, serde) and [`Workload`](crate::Workload)
//! (variants, `parse`, `kind`, `validate`) with the
//! [`WorkloadData`](crate::WorkloadData) step to each struct. A new type is
//! one line there, its struct and its `check`, so nothing else in this
//! crate names the types one by one.

/// `workload_types! { Variant = "wire", ... }`, in dependency order. Each
/// `Variant` is also the name of its `data` struct (in scope where the
/// macro is used), which has `fn check(&self) -> Result<(), Error>`: the
/// range checks that need no node state.
macro_rules! workload_types {
    ($($variant:ident = $wire:literal),+ $(,)?) => {
        /// The closed set of workload types of the protocol. Declared in
        /// dependency order, which is `ALL`'s and [`WorkloadType::order`]'s.
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            ::serde::Serialize,
            ::serde::Deserialize,
        )]
        #[non_exhaustive]
        pub enum WorkloadType {
            $(
                #[doc = concat!("`", $wire, "`, whose `data` is [`", stringify!($variant), "`].")]
                #[serde(rename = $wire)]
                $variant,
            )+
        }

        impl WorkloadType {
            /// Every type, in dependency order: a poll batch is handled in
            /// this order so a container never fails because its network
            /// came later.
            pub const ALL: [WorkloadType; [$($wire),+].len()] = [$(WorkloadType::$variant),+];

            /// The wire name (`"container"`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(WorkloadType::$variant => $wire,)+
                }
            }

            /// Position in the dependency order of [`WorkloadType::ALL`].
            pub fn order(self) -> usize {
                self as usize
            }
        }

        impl ::std::fmt::Display for WorkloadType {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for WorkloadType {
            type Err = $crate::Error;
            fn from_str(s: &str) -> Result<Self, $crate::Error> {
                WorkloadType::ALL
                    .into_iter()
                    .find(|t| t.as_str() == s)
                    .ok_or_else(|| $crate::Error::Field {
                        field: "type".into(),
                        message: format!(
                            "unknown workload type {s:?}: expected one of {}",
                            WorkloadType::ALL.map(WorkloadType::as_str).join(", ")
                        ),
                    })
            }
        }

        /// Parsed and validated `data` of one of the types.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Workload {
            $($variant($variant),)+
        }

        $(
            impl $crate::workloads::WorkloadData for $variant {
                const KIND: WorkloadType = WorkloadType::$variant;
                fn of(w: &Workload) -> Option<&Self> {
                    match w {
                        Workload::$variant(d) => Some(d),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )+

        impl Workload {
            /// Parse `data` as workload type `kind` and check every range.
            pub fn parse(
                kind: WorkloadType,
                raw: &::serde_json::value::RawValue,
            ) -> Result<Workload, $crate::Error> {
                let w = match kind {
                    $(WorkloadType::$variant => Workload::$variant(parse_as(raw)?),)+
                };
                w.validate()?;
                Ok(w)
            }

            /// The type of this workload.
            pub fn kind(&self) -> WorkloadType {
                match self {
                    $(Workload::$variant(_) => WorkloadType::$variant,)+
                }
            }

            /// Range checks that need no node state.
            pub fn validate(&self) -> Result<(), $crate::Error> {
                match self {
                    $(Workload::$variant(d) => d.check(),)+
                }
            }
        }
    };
}
