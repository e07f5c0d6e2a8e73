// Package filestamp tells whether a file the gateway reloads (rules,
// htpasswd) has changed since it was last read.
package filestamp

import "os"

// Stamp identifies one version of a file by modification time, size and
// identity (device and inode on Unix): an atomic rename over the path, as a
// Kubernetes ConfigMap update does, is a change even when time and size
// happen to match.
type Stamp struct {
	info os.FileInfo
}

// FromInfo stamps the version fi describes.
func FromInfo(fi os.FileInfo) *Stamp { return &Stamp{info: fi} }

// Of stamps the current version of path.
func Of(path string) (*Stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return FromInfo(fi), nil
}

// Matches reports whether fi is the stamped version. A nil Stamp matches
// nothing.
func (s *Stamp) Matches(fi os.FileInfo) bool {
	return s != nil &&
		s.info.ModTime().Equal(fi.ModTime()) &&
		s.info.Size() == fi.Size() &&
		os.SameFile(s.info, fi)
}
