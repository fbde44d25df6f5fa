package main

import (
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/connsync/connsync/api/connsync/v1"
	"github.com/connsync/connsync/client"
)

// keyUsage is the positional part of every command that names a connection.
const keyUsage = "PROTO SRC DST"

// keyExample is a connection as written on the command line.
const keyExample = "tcp 10.0.0.1:1234 192.0.2.1:80"

// keyArgs checks that a command got exactly PROTO SRC DST.
func keyArgs(verb string) cobra.PositionalArgs {
	return exactArgs(3, fmt.Sprintf("%s needs %s, e.g. connsyncctl %s %s", verb, keyUsage, verb, keyExample))
}

// parseKey builds a connection key from PROTO SRC DST. The server validates
// and canonicalises the values.
func parseKey(zone string, args []string) (*pb.ConnKey, error) {
	if len(args) != 3 {
		return nil, fmt.Errorf("want %s, got %d arguments", keyUsage, len(args))
	}
	return client.Key(zone, args[0], args[1], args[2])
}

// keyFlags are the flags shared by the commands that name a connection.
type keyFlags struct {
	zone   string
	member string
}

func (k *keyFlags) addZone(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.zone, "zone", "", `zone or VRF of the connection ("" is the default zone)`)
}

func (k *keyFlags) addMember(cmd *cobra.Command, what string) {
	cmd.Flags().StringVar(&k.member, "member", "", what+`; "" means the member at the first --addr`)
}
