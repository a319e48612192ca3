package engine

// TableElementBytes is what one element of a table costs the host: a
// pointer, in both engines (wasmtime's funcref slot, wazero's Reference).
const TableElementBytes = 8

// TableElements is the most elements a table of an instance with a memory
// limit of limit bytes may have: as many as fit in the limit. Tables live
// in the engine's memory, not in linear memory, so without this a module
// growing a table in a loop took host memory until the node ran out
// (table.grow fails past it, as memory.grow does past the limit). Each
// table and the linear memory are bounded by the limit separately: the
// engines offer static caps, not one budget.
func TableElements(limit int64) int64 {
	return max(limit/TableElementBytes, 1)
}
