package instance

// labelIndex finds instances by a label without looking at all of them: a
// node agent lists each pod's instances by the pod's uid label, once a
// minute for every pod, and a scan per list made that quadratic in pods
// (at 5,000 pods, 25 million label lookups a minute under the manager's
// lock). Keys are "key=value"; labels never change after Create.
type labelIndex map[string]map[string]*record

func labelKey(k, v string) string { return k + "=" + v }

func (x labelIndex) add(id string, rec *record) {
	for k, v := range rec.snap.Spec.Labels {
		key := labelKey(k, v)
		ids := x[key]
		if ids == nil {
			ids = map[string]*record{}
			x[key] = ids
		}
		ids[id] = rec
	}
}

func (x labelIndex) remove(id string, rec *record) {
	for k, v := range rec.snap.Spec.Labels {
		key := labelKey(k, v)
		if ids := x[key]; ids != nil && ids[id] == rec {
			delete(ids, id)
			if len(ids) == 0 {
				delete(x, key)
			}
		}
	}
}

// candidates are the records that may match selector: those with its
// rarest pair, or all of them (all) when it is empty. The caller still
// checks each with matches.
func (x labelIndex) candidates(selector map[string]string, all map[string]*record) map[string]*record {
	if len(selector) == 0 {
		return all
	}
	var best map[string]*record
	for k, v := range selector {
		ids := x[labelKey(k, v)]
		if len(ids) == 0 {
			return nil
		}
		if best == nil || len(ids) < len(best) {
			best = ids
		}
	}
	return best
}
