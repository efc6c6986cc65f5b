#!/usr/bin/env bash
# Sourced: `capo_apt_install WHO PACKAGE...` installs the Debian packages not yet
# installed (one apt-get update first), saying who asked; with sudo when not root.
capo_apt_install() {
    local who=$1
    shift
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    echo "$who: installing ${missing[*]}" >&2
    local sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
}
