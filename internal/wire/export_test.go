package wire

// BufferLen is the length of r's read buffer, for tests of its growth.
func BufferLen(r *Reader) int { return len(r.buf) }
