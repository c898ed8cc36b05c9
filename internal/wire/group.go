package wire

import (
	"encoding/binary"
	"fmt"
)

// Actions of a GROUP request.
const (
	GroupCreate           uint8 = 1 // create a group that receives messages stored from now on
	GroupCreateFromOldest uint8 = 2 // create a group that also takes every message the queue still holds
	GroupDelete           uint8 = 3 // delete a group
)

// Group is the body of a GROUP frame (version 3).
type Group struct {
	Action uint8
	Queue  []byte
	Group  []byte
}

// Grouped is the body of a GROUPED frame, the answer to GROUP.
type Grouped struct {
	// Changed: the group was created or deleted; false when it existed
	// already (create) or did not exist (delete).
	Changed bool
	// Count is, for a create from the oldest, the messages the group
	// took; for a delete, the messages freed at once.
	Count uint64
	// Pending is, for a delete, the messages then pending with the
	// group's consumers, freed if they come back unacknowledged.
	Pending uint64
}

const (
	groupFixed  = 4
	groupedSize = 24
)

// AppendGroup appends a GROUP frame to b.
func AppendGroup(b []byte, id uint64, g Group) []byte {
	b, st := begin(b, OpGroup, 0, 0, id)
	b = append(b, g.Action, uint8(len(g.Queue)), uint8(len(g.Group)), 0)
	b = append(b, g.Queue...)
	b = append(b, g.Group...)
	return finish(b, st)
}

// ParseGroup decodes a GROUP body; Queue and Group alias body.
func ParseGroup(body []byte) (Group, error) {
	if len(body) < groupFixed {
		return Group{}, fmt.Errorf("%w: GROUP body is %d bytes, want at least %d", ErrMalformed, len(body), groupFixed)
	}
	g := Group{Action: body[0]}
	nl, gl := int(body[1]), int(body[2])
	switch {
	case body[3] != 0:
		return Group{}, fmt.Errorf("%w: GROUP reserved byte is not 0", ErrMalformed)
	case g.Action < GroupCreate || g.Action > GroupDelete:
		return Group{}, fmt.Errorf("%w: GROUP action %d is not 1 (create), 2 (create from the oldest) or 3 (delete)", ErrMalformed, g.Action)
	case len(body)-groupFixed != nl+gl:
		return Group{}, fmt.Errorf("%w: GROUP declares a %d-byte queue name and a %d-byte group name but carries %d bytes", ErrMalformed, nl, gl, len(body)-groupFixed)
	}
	g.Queue = body[groupFixed : groupFixed+nl : groupFixed+nl]
	g.Group = body[groupFixed+nl:]
	return g, nil
}

// AppendGrouped appends a GROUPED frame to b.
func AppendGrouped(b []byte, id uint64, g Grouped) []byte {
	b, st := begin(b, OpGrouped, 0, 0, id)
	changed := uint8(0)
	if g.Changed {
		changed = 1
	}
	b = append(b, changed, 0, 0, 0, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, g.Count)
	b = binary.LittleEndian.AppendUint64(b, g.Pending)
	return finish(b, st)
}

// ParseGrouped decodes a GROUPED body.
func ParseGrouped(body []byte) (Grouped, error) {
	if len(body) != groupedSize {
		return Grouped{}, fmt.Errorf("%w: GROUPED body is %d bytes, want %d", ErrMalformed, len(body), groupedSize)
	}
	return Grouped{Changed: body[0] != 0, Count: binary.LittleEndian.Uint64(body[8:]), Pending: binary.LittleEndian.Uint64(body[16:])}, nil
}
