//! kerno
