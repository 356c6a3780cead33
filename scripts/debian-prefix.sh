#!/usr/bin/env bash
# debian-prefix.sh: unpack a Debian package closure into a private prefix, never into the
# system. Sourced by scripts/linux-setup.sh (--uml7) and scripts/qemu-setup.sh; the harness,
# which runs those scripts from their embedded text, puts this file's text in front of them.
#
#   debian_prefix APT_DIR PREFIX SOURCES_LIST APT_GET_INSTALL_ARGS...
#
# apt runs with a private configuration under APT_DIR (its own sources list, lists, cache and
# an empty dpkg status file, so it resolves the whole closure as if nothing were installed),
# downloads only (`-d`), and `dpkg-deb -x` unpacks each package into PREFIX. SOURCES_LIST is
# the text of a sources.list (signed by the system's Debian archive keyring). APT_DIR is
# removed afterwards. Needs no root.
debian_prefix() {
    local apt_dir="$1" prefix="$2" sources="$3"
    shift 3
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" \
        "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" \
        "$apt_dir/etc/trusted.gpg.d" "$prefix"
    : >"$apt_dir/status"
    printf '%s\n' "$sources" >"$apt_dir/etc/sources.list"
    local apt_private=(
        -o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::State::status=$apt_dir/status" -o "Dir::Cache=$apt_dir"
        -o "Dir::Cache::Archives=$apt_dir/archives"
        -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
        -o "Dir::Etc::SourceParts=$apt_dir/etc/sources.list.d"
        -o "Dir::Etc::Preferences=$apt_dir/etc/preferences"
        -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
        -o "Dir::Etc::TrustedParts=$apt_dir/etc/trusted.gpg.d"
        -o "APT::Architecture=amd64" -o "APT::Architectures=amd64"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
    )
    apt-get -q "${apt_private[@]}" update >&2
    apt-get -q -y "${apt_private[@]}" --no-install-recommends -d "$@" >&2
    local deb
    for deb in "$apt_dir"/archives/*.deb; do
        dpkg-deb -x "$deb" "$prefix"
    done
    rm -rf "$apt_dir"
}
