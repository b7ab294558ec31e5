#!/run/corral-vm/busybox sh
# corral VM, stage 2: runs the command after switch_root and reports its exit
# status to the host through the control share.
#   plain:   PID 1; opens the stdout/stderr ports itself, reboots at the end.
#   systemd: ExecStart of corral-test.service; systemd set up stdout/stderr
#            and reboots (SuccessAction=/FailureAction=).
B=/run/corral-vm/busybox
C=/run/corral-vm/ctl
: >$C/started
if [ "$1" = plain ]; then
	. /run/corral-vm/ports
	$B sh $C/cmd.sh </dev/null >"$OUT" 2>"$ERR"
	echo $? >$C/status.tmp
	$B mv $C/status.tmp $C/status
	$B reboot -f
	exit 1
fi
$B sh $C/cmd.sh </dev/null
echo $? >$C/status.tmp
$B mv $C/status.tmp $C/status
exit 0
