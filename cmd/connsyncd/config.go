package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// applyConfigFile sets every flag named in a YAML file that was not given on
// the command line. Keys are flag names; a list value (join) is joined with
// commas. Unknown keys are an error, so a typo does not pass silently.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var kv map[string]any
	if err := yaml.Unmarshal(data, &kv); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config %s: unknown key %q (keys are connsyncd's flag names; see connsyncd -h)", path, k)
		}
		if given[k] {
			continue
		}
		var v string
		switch x := kv[k].(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			v = strings.Join(parts, ",")
		case nil:
			continue
		case map[string]any:
			return fmt.Errorf("config %s: %s: want a single value or a list, not a mapping", path, k)
		default:
			v = fmt.Sprint(x)
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("config %s: %s: %w", path, k, err)
		}
	}
	return nil
}
