//! Metric label values as types: each label of a metric with a fixed set of values is an
//! enum here, so call sites cannot misspell one and every value can be exported from the start.

/// A metric label with a fixed set of values.
pub trait Label: Copy + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The value as exported.
    fn label(self) -> &'static str;
}

/// Declares a label enum and its [`Label`] impl.
macro_rules! label {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $name {
            pub const ALL: &'static [Self] = <Self as Label>::ALL;

            pub fn label(self) -> &'static str {
                Label::label(self)
            }
        }
    };
}

label! {
    /// `call` of the control-plane request metrics.
    Call {
        WakeCompute => "wake_compute",
        AccessControl => "access_control",
        Activity => "activity",
    }
}

label! {
    /// `outcome` of `gateway_secret_verifications_total`: how a password check against a
    /// role secret went.
    SecretOutcome {
        /// Proven by an earlier check of the same password against the same secret.
        Cached => "cached",
        Match => "match",
        Mismatch => "mismatch",
        /// Checked against a mock secret (unknown endpoint or role): always refused.
        Mock => "mock",
        /// A static route: nothing to check against, Postgres judges.
        NoSecret => "no_secret",
    }
}

label! {
    /// `reason` of `gateway_role_invalidations_total`.
    Invalidation {
        /// One role's password changed or it was dropped.
        RoleChange => "role_change",
        /// This gateway's first reply: everything it cached before may be stale.
        FirstReply => "first_reply",
        /// The reply could not list every change: everything, idle connections included.
        Truncated => "truncated",
    }
}
