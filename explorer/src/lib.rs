//! explorer (under construction)
