// Package journal is machq's write-ahead log: an append-only sequence of
// records in segment files, written by one goroutine that makes every
// record durable before it is acknowledged, with group commit (the
// records that arrive while a sync runs share the next one), and read
// back at start by a recovery that truncates a torn tail and refuses, or
// with permission quarantines, corruption in the middle. The format is
// specified in docs/STORAGE.md; this file implements it.
package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The segment header.
const (
	// Magic opens every segment file.
	Magic = "MCHQJRNL"
	// FormatVersion is the version of the format this package writes;
	// it reads every version from 1 to it. Version 2 adds the durable
	// queues' sequence record, version 3 their consumer groups' records
	// (docs/STORAGE.md): the journal's own layout is the same, but a
	// reader of an earlier version must not see them.
	FormatVersion = 3
	// HeaderSize is the size of a segment's header.
	HeaderSize = 40
	// RecordHeaderSize is the size of a record's header.
	RecordHeaderSize = 24
	// MaxRecord is the largest record payload: a 1 MiB inline message
	// and room for what describes it.
	MaxRecord = 2 << 20
)

// IDFile names the file holding the journal's directory id, which every
// segment repeats: a segment of another directory is recognised.
const IDFile = "JOURNAL"

// segmentName returns the file name of the segment whose first record has
// the number first.
func segmentName(first uint64) string { return fmt.Sprintf("%016x.seg", first) }

// parseSegmentName returns the first record number a segment's name says,
// and whether it is a segment's name.
func parseSegmentName(name string) (uint64, bool) {
	var first uint64
	if len(name) != 20 || name[16:] != ".seg" {
		return 0, false
	}
	if _, err := fmt.Sscanf(name[:16], "%016x", &first); err != nil {
		return 0, false
	}
	return first, true
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segmentHeader is what a segment file starts with.
type segmentHeader struct {
	version uint16 // as read; encode writes FormatVersion
	dirID   uint64
	salt    uint64
	first   uint64 // number of the segment's first record
}

func (h segmentHeader) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[8:], FormatVersion)
	binary.LittleEndian.PutUint64(b[16:], h.dirID)
	binary.LittleEndian.PutUint64(b[24:], h.salt)
	binary.LittleEndian.PutUint64(b[32:], h.first)
	return b
}

// errHeader reports a segment header that is not one.
var errHeader = errors.New("journal: not a segment header")

func decodeHeader(b []byte) (segmentHeader, error) {
	if len(b) < HeaderSize || string(b[:8]) != Magic {
		return segmentHeader{}, fmt.Errorf("%w: no %q magic", errHeader, Magic)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v < 1 || v > FormatVersion {
		return segmentHeader{}, fmt.Errorf("%w: format version %d, this server reads 1 to %d: start a machqd that reads it", errHeader, v, FormatVersion)
	}
	return segmentHeader{
		version: binary.LittleEndian.Uint16(b[8:]),
		dirID:   binary.LittleEndian.Uint64(b[16:]),
		salt:    binary.LittleEndian.Uint64(b[24:]),
		first:   binary.LittleEndian.Uint64(b[32:]),
	}, nil
}

// appendRecord appends the record (lsn, typ, data) of a segment salted
// salt to b.
func appendRecord(b []byte, salt, lsn uint64, typ uint8, data []byte) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	b = binary.LittleEndian.AppendUint32(b, 0) // CRC, below
	b = binary.LittleEndian.AppendUint64(b, lsn)
	b = append(b, typ, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, data...)
	binary.LittleEndian.PutUint32(b[start+4:], recordCRC(salt, b[start+8:]))
	return b
}

// recordCRC is the CRC-32C of the salt followed by a record from its
// number on.
func recordCRC(salt uint64, rest []byte) uint32 {
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], salt)
	return crc32.Update(crc32.Checksum(s[:], castagnoli), castagnoli, rest)
}

// Record is one record of the journal.
type Record struct {
	LSN  uint64 // its number: 1, 2, 3, ... in the order written
	Type uint8  // never 0
	Data []byte
}

// decodeRecord decodes the record at the start of b, of a segment salted
// salt, and returns it with its encoded length; ok is false unless b
// holds a whole valid record (the length in bounds, the reserved bytes 0,
// the type not 0, the CRC right).
func decodeRecord(b []byte, salt uint64) (r Record, n int, ok bool) {
	if len(b) < RecordHeaderSize {
		return Record{}, 0, false
	}
	length := binary.LittleEndian.Uint32(b)
	if length > MaxRecord || int(length) > len(b)-RecordHeaderSize {
		return Record{}, 0, false
	}
	n = RecordHeaderSize + int(length)
	if binary.LittleEndian.Uint32(b[4:]) != recordCRC(salt, b[8:n]) {
		return Record{}, 0, false
	}
	r = Record{LSN: binary.LittleEndian.Uint64(b[8:]), Type: b[16], Data: b[RecordHeaderSize:n:n]}
	for _, x := range b[17:24] {
		if x != 0 {
			return Record{}, 0, false
		}
	}
	if r.Type == 0 {
		return Record{}, 0, false
	}
	return r, n, true
}
